"""CORE evaluation: bundle reading, prompts and spans, scoring whose answers are known by construction,
batched == one-at-a-time on a real tiny GPT, the metric's arithmetic, fetching the bundle over HTTP,
and scripts.base_eval end to end."""

import csv
import io
import json
import subprocess
import sys
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from nanochat import core_eval
from nanochat.core_eval import (
    centered_accuracy,
    check_bundle_zip,
    core_metric,
    crop_left,
    describe_baselines,
    ensure_bundle,
    evaluate_core,
    evaluate_task,
    fewshot_indices,
    load_rows,
    load_tasks,
    render_prompts,
    scored_spans,
)
from nanochat.download import DownloadError
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer
from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env
from tests.http_server import start_server, stop_server

# ---------------------------------------------------------------------------------------------
# A bundle whose answers a "successor" model gets right or wrong by construction


class Successor(torch.nn.Module):
    """Logits that put nearly all mass on (current token + 1): with byte tokens, 'lmno' costs almost
    nothing after 'l', while any step that is not +1 costs ~20 nats. Context beyond one token is ignored."""

    def __init__(self, vocab: int, max_len: int | None = None):
        super().__init__()
        self.vocab, self.max_len, self.calls = vocab, max_len, []

    def forward(self, idx):
        if self.max_len is not None:
            assert idx.size(1) <= self.max_len, f"a sequence of {idx.size(1)} > {self.max_len} reached the model"
        self.calls.append(tuple(idx.shape))
        return 20.0 * torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float()


def byte_tokenizer() -> Tokenizer:
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


# multiple_choice (default delimiter " "): the choice whose letters run on (+1 steps) wins.
MC_ROWS = [
    {"query": "Q0:", "choices": ["lmno", "lonm", "olmn"], "gold": 0},
    {"query": "Q1:", "choices": ["dcba", "abcd", "bdca"], "gold": 1},
    {"query": "Q2:", "choices": ["xwvu", "zyxw", "uvwx"], "gold": 2},
    {"query": "Q3:", "choices": ["fghi", "ihgf"], "gold": 0},
    {"query": "Q4:", "choices": ["pqrs", "srqp", "qspr"], "gold": 1},  # gold is not the run-on choice
    {"query": "Q5:", "choices": ["jilk", "jklm"], "gold": 0},  # nor here
]
MC_PREDICTED = [0, 1, 2, 0, 0, 1]
# schema (delimiter ""): the continuation "defg" runs on only after a context ending in "c".
SCHEMA_ROWS = [
    {"context_options": ["xyz", "abc", "pqr"], "continuation": "defg", "gold": 1},
    {"context_options": ["abc", "mno"], "continuation": "defg", "gold": 0},
    {"context_options": ["tuv", "klm", "abc"], "continuation": "defg", "gold": 2},
    {"context_options": ["abc", "xyz"], "continuation": "defg", "gold": 1},  # wrong by construction
]
SCHEMA_PREDICTED = [1, 0, 2, 0]
# language_modeling (delimiter ""): right only when every continuation byte is the previous + 1.
LM_ROWS = [
    {"context": "ab", "continuation": "cdef"},
    {"context": "  mn", "continuation": "opq"},  # leading spaces are stripped, not scored
    {"context": "uv", "continuation": "wxz"},  # last byte breaks the run
    {"context": "gh", "continuation": "xjk"},  # first byte breaks it
    {"context": "rs", "continuation": "tuvwxy"},
]
LM_PREDICTED = [1, 1, 0, 0, 1]
BASELINES = {"mc": 25.0, "schema": 50.0, "lm": 0.0}


def write_bundle(root: Path, tasks=None, baselines=None) -> Path:
    """eval_bundle/ in the public layout: core.yaml, eval_meta_data.csv, eval_data/<folder>/<file>.jsonl."""
    tasks = tasks if tasks is not None else [
        ("mc", "multiple_choice", "reasoning/mc.jsonl", 2, None, MC_ROWS),
        ("schema", "schema", "language/schema.jsonl", 1, "", SCHEMA_ROWS),
        ("lm", "language_modeling", "lm.jsonl", 3, "", LM_ROWS),
    ]
    baselines = baselines if baselines is not None else BASELINES
    bundle = root / "eval_bundle"
    lines = ["icl_tasks:"]
    for label, kind, uri, shots, delimiter, rows in tasks:
        lines += [f"- label: {label}", f"  dataset_uri: {uri}", f"  num_fewshot: [{shots}]", f"  icl_task_type: {kind}"]
        if delimiter is not None:
            lines.append(f"  continuation_delimiter: {json.dumps(delimiter)}")
        path = bundle / "eval_data" / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (bundle / "core.yaml").write_text("\n".join(lines) + "\n")
    meta = ["Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description"]
    meta += [f"{label},x,y,0,10,{value},yes,\"a task, described\"" for label, value in baselines.items()]
    (bundle / "eval_meta_data.csv").write_text("\n".join(meta) + "\n")
    return bundle


def expected_in_shuffled_order(rows, predicted, gold_of):
    """(predicted, correct) per row in load_rows' order, from the construction above."""
    order = list(range(len(rows)))
    core_eval.random.Random(core_eval.SHUFFLE_SEED).shuffle(order)
    return [(predicted[i], predicted[i] == gold_of(i)) for i in order]


@pytest.fixture
def bundle(tmp_path):
    return write_bundle(tmp_path)


# ---------------------------------------------------------------------------------------------
# Reading the bundle


def test_load_tasks_reads_yaml_defaults_and_baselines(bundle):
    tasks = load_tasks(bundle)
    assert [t.label for t in tasks] == ["mc", "schema", "lm"]
    mc, schema, lm = tasks
    assert (mc.task_type, mc.num_fewshot, mc.delimiter, mc.random_baseline) == ("multiple_choice", 2, " ", 25.0)
    assert (schema.delimiter, schema.random_baseline, schema.dataset_uri) == ("", 50.0, "language/schema.jsonl")
    assert (lm.task_type, lm.num_fewshot) == ("language_modeling", 3)


def test_load_rows_shuffles_deterministically(bundle):
    task = load_tasks(bundle)[0]
    rows = load_rows(bundle, task)
    assert rows == load_rows(bundle, task)
    assert sorted(r["query"] for r in rows) == sorted(r["query"] for r in MC_ROWS)
    assert [r["query"] for r in rows] != [r["query"] for r in MC_ROWS]  # shuffled (this seed moves them)


def test_bad_bundles_fail_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m scripts.base_eval --download_only"):
        load_tasks(tmp_path / "nowhere")
    bundle = write_bundle(tmp_path / "a", baselines={"mc": 25.0, "schema": 50.0})
    with pytest.raises(ValueError, match="no `Random baseline` for task 'lm'"):
        load_tasks(bundle)
    bundle = write_bundle(tmp_path / "b", tasks=[("mc", "ranking", "mc.jsonl", 0, None, MC_ROWS)])
    with pytest.raises(ValueError, match="multiple_choice, schema, language_modeling"):
        load_tasks(bundle)
    bad = [dict(MC_ROWS[0]), dict(MC_ROWS[1], gold=3)]
    bundle = write_bundle(tmp_path / "c", tasks=[("mc", "multiple_choice", "mc.jsonl", 0, None, bad)])
    with pytest.raises(ValueError, match=r"mc.jsonl:2: multiple_choice row gold must index choices \(0..2\), got 3"):
        load_rows(bundle, load_tasks(bundle)[0])
    bundle = write_bundle(tmp_path / "d")
    (bundle / "eval_data" / "lm.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="task lm: no .*lm.jsonl; the bundle is incomplete"):
        load_rows(bundle, load_tasks(bundle)[2])


# ---------------------------------------------------------------------------------------------
# Prompts, spans, cropping


def test_fewshot_is_deterministic_distinct_and_never_the_row_itself():
    for index in range(10):
        picks = fewshot_indices(10, index, 4)
        assert picks == fewshot_indices(10, index, 4)
        assert len(set(picks)) == 4 and index not in picks and all(0 <= p < 10 for p in picks)
    assert {tuple(fewshot_indices(10, i, 4)) for i in range(10)} != {tuple(fewshot_indices(10, 0, 4))}
    assert sorted(fewshot_indices(3, 1, 5)) == [0, 2]  # capped at the rows there are


def test_render_prompts_per_type():
    shot = {"query": "2+2=", "choices": ["3", "4"], "gold": 1}
    assert render_prompts("multiple_choice", {"query": "1+1=", "choices": ["2", "5"], "gold": 0}, [shot], " ") == [
        "2+2= 4\n\n1+1= 2", "2+2= 4\n\n1+1= 5"]
    shot = {"context_options": ["He", "She"], "continuation": "ran.", "gold": 0}
    assert render_prompts("schema", {"context_options": ["A", "B"], "continuation": "sat.", "gold": 1}, [shot], " ") == [
        "He ran.\n\nA sat.", "He ran.\n\nB sat."]
    shot = {"context": " Capital of France?", "continuation": "Paris"}
    without, full = render_prompts("language_modeling", {"context": "Capital of Spain? ", "continuation": "Madrid"},
                                   [shot], "\nAnswer: ")
    assert full == "Capital of France?\nAnswer: Paris\n\nCapital of Spain?\nAnswer: Madrid"
    assert without == "Capital of France?\nAnswer: Paris\n\nCapital of Spain?\nAnswer:"  # trailing space dropped


def test_scored_spans_cover_exactly_the_continuations():
    tok = byte_tokenizer()
    enc = lambda texts: tok.encode(texts, prepend=tok.bos_token_id)

    def text(span):
        tokens, start, end = span
        return tok.decode(tokens[start:end])

    mc = scored_spans("multiple_choice", enc(["Q: the cat", "Q: the dog", "Q: a bird"]))
    assert [text(s) for s in mc] == ["the cat", "the dog", "a bird"]
    assert [text(s) for s in scored_spans("schema", enc(["The cat ran", "A dog ran"]))] == [" ran", " ran"]
    # language_modeling: the space the prompt lost to rstrip belongs to the continuation
    (lm,) = scored_spans("language_modeling", enc(["abc", "abc def"]))
    assert text(lm) == " def" and lm[0][0] == tok.bos_token_id
    # one choice a prefix of another: each still scores at least its last token
    assert [text(s) for s in scored_spans("multiple_choice", enc(["Q: ab", "Q: abc"]))] == ["b", "bc"]


def test_crop_left_keeps_the_continuation():
    tokens = list(range(20))
    assert crop_left(tokens, 15, 20, 32) == (tokens, 15, 20)
    cropped, start, end = crop_left(tokens, 15, 20, 8)
    assert cropped == list(range(12, 20)) and cropped[start:end] == list(range(15, 20))
    cropped, start, end = crop_left(tokens, 5, 20, 8)  # continuation longer than the window
    assert cropped == list(range(12, 20)) and (start, end) == (1, 8)


# ---------------------------------------------------------------------------------------------
# Scoring with answers known by construction


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scoring_matches_construction(bundle, batch_size):
    tok = byte_tokenizer()
    model = Successor(tok.n_vocab)
    mc, schema, lm = load_tasks(bundle)
    cases = [
        (mc, MC_ROWS, MC_PREDICTED, lambda i: MC_ROWS[i]["gold"]),
        (schema, SCHEMA_ROWS, SCHEMA_PREDICTED, lambda i: SCHEMA_ROWS[i]["gold"]),
        (lm, LM_ROWS, LM_PREDICTED, lambda i: 1),
    ]
    for task, rows, predicted, gold_of in cases:
        result = evaluate_task(model, tok, task, load_rows(bundle, task), batch_size=batch_size, progress_every=0)
        expected = expected_in_shuffled_order(rows, predicted, gold_of)
        assert [(e.predicted, e.correct) for e in result.examples] == expected, task.label
        assert (result.correct, result.total) == (sum(c for _, c in expected), len(rows))
    assert max(b for b, _ in model.calls) == batch_size  # batched path really stacks sequences


def test_evaluate_core_arithmetic(bundle):
    tok = byte_tokenizer()
    out = evaluate_core(Successor(tok.n_vocab), tok, bundle, batch_size=8, log=lambda line: None, progress_every=0)
    acc = {"mc": 4 / 6, "schema": 3 / 4, "lm": 3 / 5}
    centered = {"mc": (4 / 6 - 0.25) / 0.75, "schema": (3 / 4 - 0.5) / 0.5, "lm": 3 / 5}
    for label in acc:
        assert out["tasks"][label]["accuracy"] == pytest.approx(acc[label])
        assert out["tasks"][label]["centered"] == pytest.approx(centered[label])
    assert out["CORE"] == pytest.approx(sum(centered.values()) / 3)


def test_centered_accuracy_and_core_metric():
    assert centered_accuracy(0.25, 25.0) == 0.0
    assert centered_accuracy(1.0, 25.0) == 1.0
    assert centered_accuracy(0.625, 25.0) == pytest.approx(0.5)
    assert centered_accuracy(0.1, 25.0) == pytest.approx(-0.2)  # below chance goes negative
    assert centered_accuracy(0.4, 0.0) == 0.4
    assert core_metric([0.5, -0.1, 0.2]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"percentage in \[0, 100\)"):
        centered_accuracy(0.5, 100.0)
    with pytest.raises(ValueError):
        core_metric([])


def test_long_prompts_are_cropped_on_the_left_and_still_scored(tmp_path):
    # 6 few-shot examples of ~40 bytes make every prompt longer than the 48-token window
    rows = [{"query": f"Question number {i} is rather long: ", "choices": ["lmno", "onml"], "gold": i % 2}
            for i in range(8)]
    bundle = write_bundle(tmp_path, tasks=[("mc", "multiple_choice", "mc.jsonl", 6, None, rows)],
                          baselines={"mc": 50.0})
    tok = byte_tokenizer()
    model = Successor(tok.n_vocab, max_len=48)
    task = load_tasks(bundle)[0]
    result = evaluate_task(model, tok, task, load_rows(bundle, task), max_seq_len=48, batch_size=4, progress_every=0)
    assert all(t == 48 for _, t in model.calls)  # every one cropped to the window, none rejected
    assert all(e.predicted == 0 for e in result.examples)  # the continuation survived the crop
    assert result.correct == 4 and result.cropped == 8


def test_sharding_and_max_problems(bundle):
    tok = byte_tokenizer()
    model = Successor(tok.n_vocab)
    task = load_tasks(bundle)[0]
    rows = load_rows(bundle, task)
    full = evaluate_task(model, tok, task, rows, progress_every=0)
    shards = [evaluate_task(model, tok, task, rows, rank=r, world_size=2, progress_every=0) for r in range(2)]
    assert [e.index for e in shards[0].examples] == [0, 2, 4] and [e.index for e in shards[1].examples] == [1, 3, 5]
    assert sum(s.correct for s in shards) == full.correct
    assert sorted(shards[0].examples + shards[1].examples, key=lambda e: e.index) == full.examples
    part = evaluate_task(model, tok, task, rows, max_problems=4, progress_every=0)
    assert part.total == 4 and part.examples == full.examples[:4]  # the same rows, scored the same


# ---------------------------------------------------------------------------------------------
# Batched == one sequence at a time, on a real GPT


@pytest.fixture
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a loaded machine their spinning costs 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_tiny_gpt(base_dir):
    from nanochat.checkpoint import load_model

    make_tiny_checkpoint(base_dir, "base", "d1")
    model, _ = load_model("base", tag="d1")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the fresh init has zero output projections: randomise so attention matters
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def test_logits_at_equals_the_full_logits_picked(base_dir, one_thread):
    model = random_tiny_gpt(base_dir)
    idx = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    rows, cols = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([5, 39, 0, 17, 18, 30])
    with torch.no_grad():
        fast = core_eval.logits_at(model, idx, rows, cols)
        full = model(idx)
    assert fast.shape == (6, model.config.vocab_size)
    torch.testing.assert_close(fast, full[rows, cols], atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time_on_a_tiny_gpt(tmp_path, base_dir, one_thread):
    model = random_tiny_gpt(base_dir)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    rnd = core_eval.random.Random(5)
    mc = [{"query": " ".join(rnd.choices(words, k=rnd.randint(2, 9))) + "?",
           "choices": [" ".join(rnd.choices(words, k=rnd.randint(1, 4))) for _ in range(rnd.randint(2, 4))],
           "gold": 0} for _ in range(12)]
    schema = [{"context_options": [" ".join(rnd.choices(words, k=rnd.randint(1, 5))) for _ in range(3)],
               "continuation": " ".join(rnd.choices(words, k=3)), "gold": 1} for _ in range(8)]
    lm = [{"context": " ".join(rnd.choices(words, k=rnd.randint(2, 6))), "continuation": rnd.choice(words)}
          for _ in range(8)]
    bundle = write_bundle(tmp_path, tasks=[("mc", "multiple_choice", "mc.jsonl", 3, None, mc),
                                           ("schema", "schema", "s.jsonl", 2, None, schema),
                                           ("lm", "language_modeling", "lm.jsonl", 2, None, lm)])
    tok = byte_tokenizer()
    lengths = set()
    for task in load_tasks(bundle):
        rows = load_rows(bundle, task)
        one = evaluate_task(model, tok, task, rows, batch_size=1, max_seq_len=128, progress_every=0)
        many = evaluate_task(model, tok, task, rows, batch_size=16, max_seq_len=128, progress_every=0)
        tight = evaluate_task(model, tok, task, rows, batch_size=16, max_batch_tokens=300, max_seq_len=128,
                              progress_every=0)
        for other in (many, tight):
            assert [(e.index, e.predicted, e.correct) for e in one.examples] == \
                   [(e.index, e.predicted, e.correct) for e in other.examples], task.label
            for a, b in zip(one.examples, other.examples):
                assert a.losses == pytest.approx(b.losses, abs=1e-5)
        if task.task_type != "language_modeling":  # options differ, so the argmin means something
            assert len({e.predicted for e in one.examples}) > 1
        lengths |= {len(p) for r in rows for p in render_prompts(task.task_type, r, [], task.delimiter)}
    assert len(lengths) > 10  # batches really mixed lengths, i.e. padding was exercised


def long_rows(n: int, length: int) -> list[dict]:
    """Multiple-choice rows whose 2-shot prompts are about `length` bytes (byte tokens: as many tokens)."""
    pad = "filler text " * (length // 36)
    return [{"query": f"{pad}question {i}:", "choices": ["lmno", "onml"], "gold": i % 2} for i in range(n)]


def test_gpt_scores_prompts_past_its_training_length_whole(tmp_path, base_dir, one_thread):
    model = random_tiny_gpt(base_dir)  # sequence_len 128: rotary tables for 1,280 positions
    assert model.config.sequence_len == 128 and core_eval.context_limit(model) == 1280
    bundle = write_bundle(tmp_path, tasks=[("past", "multiple_choice", "past.jsonl", 2, None, long_rows(5, 400)),
                                           ("beyond", "multiple_choice", "beyond.jsonl", 2, None, long_rows(3, 1500))],
                          baselines={"past": 50.0, "beyond": 50.0})
    tok = byte_tokenizer()
    lines = []
    out = evaluate_core(model, tok, bundle, batch_size=4, log=lines.append, progress_every=0)
    assert out["max_seq_len"] == 1280
    assert (out["tasks"]["past"]["cropped"], out["tasks"]["beyond"]["cropped"]) == (0, 3)
    assert "(5 rows, 2-shot" in lines[1] and "(3 rows, 3 cropped to 1280 tokens, 2-shot" in lines[2]
    # whole prompts are scored as they are: the same losses as with no limit at all, and not those
    # of the old crop to the training length
    past = load_tasks(bundle)[0]
    rows = load_rows(bundle, past)
    whole = evaluate_task(model, tok, past, rows, max_seq_len=None, progress_every=0)
    at_128 = evaluate_task(model, tok, past, rows, max_seq_len=128, progress_every=0)
    assert whole.cropped == 0 and at_128.cropped == 5
    assert out["tasks"]["past"]["accuracy"] == whole.accuracy
    assert all(len(r["query"]) > 128 for r in rows)
    limit = evaluate_task(model, tok, past, rows, max_seq_len=core_eval.context_limit(model), progress_every=0)
    flat = lambda result: [loss for e in result.examples for loss in e.losses]
    assert flat(limit) == flat(whole)
    assert all(abs(a - b) > 1e-4 for a, b in zip(flat(whole), flat(at_128)))  # cropping changed every score


def test_describe_baselines_names_the_table():
    def specs(values):
        return [core_eval.TaskSpec(label, "multiple_choice", "x.jsonl", 0, " ", value) for label, value in values.items()]

    dclm_2024 = dict(core_eval.DCLM_2024_BASELINES)
    assert len(dclm_2024) == 22 and dclm_2024["boolq"] == 62
    text = describe_baselines(specs(dclm_2024))
    assert text.startswith("DCLM 2024 (eval_bundle.zip, as upstream nanochat); sha256 ")
    changed = dclm_2024 | {"boolq": 50.0, "commonsense_qa": 25.0, "copa": 50.0}
    other = describe_baselines(specs(changed))
    assert other.startswith("not DCLM 2024: commonsense_qa 25 (2024: 20), boolq 50 (2024: 62); sha256 ")
    assert other.split("sha256 ")[1] != text.split("sha256 ")[1]  # the fingerprints tell them apart
    assert describe_baselines(specs(BASELINES)).startswith("custom: 3 task(s) not in DCLM's table (mc, schema, lm)")


# ---------------------------------------------------------------------------------------------
# Fetching the bundle


def zip_bytes(bundle: Path, *, drop_core: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(bundle.rglob("*")):
            if path.is_file() and not (drop_core and path.name == "core.yaml"):
                zf.write(path, f"eval_bundle/{path.relative_to(bundle).as_posix()}")
    return buf.getvalue()


@pytest.fixture
def serve(monkeypatch):
    """serve(body) -> URL of a local server answering every GET with body; records the requests."""
    monkeypatch.setattr(core_eval, "DOWNLOAD_RETRIES", 1)
    monkeypatch.setattr(core_eval, "RETRY_BACKOFF", 0.01)
    servers, hits = [], []

    def start(body: bytes) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        httpd, url = start_server(Handler)
        servers.append(httpd)
        return url + "/eval_bundle.zip"

    start.hits = hits
    yield start
    for httpd in servers:
        stop_server(httpd)


def leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if (p.name.startswith(".eval_bundle.") and p.suffix != ".lock") or p.suffix in (".zip", ".part"))


def test_download_unpacks_atomically_over_http(tmp_path, base_dir, serve, monkeypatch):
    url = serve(zip_bytes(write_bundle(tmp_path / "src")))
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", url)
    path = ensure_bundle()
    assert path == base_dir / "eval_bundle"
    assert [t.label for t in load_tasks(path)] == ["mc", "schema", "lm"]
    assert len(load_rows(path, load_tasks(path)[2])) == len(LM_ROWS)
    assert leftovers(base_dir) == []  # no zip, no part file, no temp dir
    assert ensure_bundle() == path and len(serve.hits) == 1  # present: no second request


def test_corrupt_or_foreign_zip_is_refused(tmp_path, base_dir, serve, monkeypatch):
    good = zip_bytes(write_bundle(tmp_path / "src"))
    corrupt = bytearray(good)
    at = good.index(b"eval_bundle/eval_data/lm.jsonl") + 200  # inside the deflated data of a member
    corrupt[at : at + 8] = b"\x00" * 8
    for body, reason in [(bytes(corrupt), "corrupt|not a readable zip"), (b"PK\x03\x04 not a zip at all", "not a readable zip"),
                         (zip_bytes(tmp_path / "src" / "eval_bundle", drop_core=True), "no core.yaml")]:
        monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", serve(body))
        with pytest.raises(FileNotFoundError, match=reason) as info:
            ensure_bundle()
        assert "python -m scripts.base_eval --download_only" in str(info.value)
        assert "\n" not in str(info.value)
        assert not (base_dir / "eval_bundle").exists() and leftovers(base_dir) == []


def test_zip_with_paths_outside_the_bundle_is_refused(tmp_path, base_dir, serve, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("eval_bundle/core.yaml", "icl_tasks: []\n")
        zf.writestr("eval_bundle/../../escaped.txt", "x")
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", serve(buf.getvalue()))
    with pytest.raises(ValueError, match="would land outside the bundle folder"):
        ensure_bundle()
    assert not (base_dir / "eval_bundle").exists() and not (tmp_path / "escaped.txt").exists()
    assert leftovers(base_dir) == []  # the refused zip is gone too, so the next try fetches afresh


def test_check_bundle_zip_accepts_the_real_layout(tmp_path):
    path = tmp_path / "b.zip"
    path.write_bytes(zip_bytes(write_bundle(tmp_path / "src")))
    assert check_bundle_zip(path) is True
    path.write_bytes(b"nonsense")
    with pytest.raises(DownloadError, match="not a readable zip"):
        check_bundle_zip(path)


def test_interrupted_unpack_leaves_no_half_bundle(tmp_path, base_dir, serve, monkeypatch):
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", serve(zip_bytes(write_bundle(tmp_path / "src"))))
    real_extract = zipfile.ZipFile._extract_member
    seen = []

    def dying_extract(self, member, *args):  # the process "dies" after writing two files
        seen.append(member)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real_extract(self, member, *args)

    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", dying_extract)
    with pytest.raises(KeyboardInterrupt):
        ensure_bundle()
    assert not (base_dir / "eval_bundle").exists()
    assert not list(base_dir.glob(".eval_bundle.*.tmp"))
    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", real_extract)
    (base_dir / ".eval_bundle.killed.tmp").mkdir()  # what a SIGKILL mid-unpack would leave
    assert (ensure_bundle() / "core.yaml").is_file()
    assert leftovers(base_dir) == []


def test_missing_bundle_offline_names_the_fetch_command(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", str(base_dir / "no_such_mirror.zip"))
    with pytest.raises(FileNotFoundError, match=r"fetching it failed: .*python -m scripts\.base_eval --download_only"):
        ensure_bundle()
    with pytest.raises(FileNotFoundError, match=r"no CORE eval bundle at .*: fetch it with python -m scripts\.base_eval"):
        ensure_bundle(download=False)


# ---------------------------------------------------------------------------------------------
# scripts.base_eval


def test_base_eval_main_returns_results_and_writes_csv(tmp_path, base_dir):
    from scripts.base_eval import Options, main

    make_tiny_checkpoint(base_dir, "base", "d1")
    write_bundle(base_dir)
    out = main(Options(device_type="cpu", device_batch_size=4, max_problems=3))
    assert set(out["tasks"]) == {"mc", "schema", "lm"}
    assert out["tasks"]["mc"]["cropped"] == 0 and set(out["tasks"]["mc"]) == {"accuracy", "centered", "cropped"}
    expected = sum(centered_accuracy(t["accuracy"], BASELINES[k]) for k, t in out["tasks"].items()) / 3
    assert out["CORE"] == pytest.approx(expected)
    path = Path(out["csv"])
    assert path == base_dir / "base_eval" / "d1_step000001.csv"
    rows = list(csv.DictReader(path.open()))
    assert [r["Task"] for r in rows] == ["mc", "schema", "lm", "CORE", "Random baselines"]
    assert float(rows[3]["Centered"]) == pytest.approx(out["CORE"], abs=1e-6)
    assert all(r["Rows"] == "3" and r["Cropped rows"] == "0" for r in rows[:3])
    assert rows[4]["Random baseline"] == out["baselines"] and out["baselines"].startswith("custom: 3 task(s)")
    (section,) = base_dir.glob("report/*base-model-evaluation.json")
    record = json.loads(section.read_text())
    assert record["data"]["random baselines"] == out["baselines"]
    assert record["notes"] == [f"random baselines: {out['baselines']}", "every prompt scored whole (none cropped)",
                               "at most 3 rows per task"]


@pytest.mark.slow
def test_base_eval_cli(tmp_path):
    base = tmp_path / "cli_base"
    make_tiny_checkpoint(base, "base", "d1")
    env = subprocess_env(NANOCHAT_BASE_DIR=str(base), NANOCHAT_EVAL_BUNDLE_URL=str(tmp_path / "missing.zip"))
    cmd = [sys.executable, "-m", "scripts.base_eval", "--device_type=cpu", "--device_batch_size=8"]
    missing = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "python -m scripts.base_eval --download_only" in errors[0], missing.stderr
    write_bundle(base)
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "CORE:" in done.stdout and "[ 3/3] lm" in done.stdout
    rows = list(csv.DictReader((base / "base_eval" / "d1_step000001.csv").open()))
    assert [r["Task"] for r in rows] == ["mc", "schema", "lm", "CORE", "Random baselines"]
    assert [r["Rows"] for r in rows[:3]] == [str(len(MC_ROWS)), str(len(SCHEMA_ROWS)), str(len(LM_ROWS))]
    bad = subprocess.run(cmd[:3] + ["--source=pretrain"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--source must be one of base, mid, sft, rl" in bad.stderr


def test_options_reject_bad_values():
    from scripts.base_eval import Options

    with pytest.raises(ValueError, match="--max_problems must be a positive count"):
        Options(max_problems=0)
    with pytest.raises(ValueError, match="--device_batch_size must be >= 1"):
        Options(device_batch_size=0)
