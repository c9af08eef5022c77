"""Engine: KV-cache decoding equals full recompute, sampling options, stopping, and calculator tool use."""

import dataclasses

import pytest
import torch

from nanochat import checkpoint as ck
from nanochat.engine import (
    CALC_ERROR_PREFIX,
    PAD_TOKEN,
    Engine,
    greedy_continuation,
    load_engine,
    sample_next,
)
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

SEQ_LEN = 64


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=SEQ_LEN, vocab_size=265, n_layer=2, n_embd=32, n_head=2, n_kv_head=1))
    with torch.no_grad():  # the default init gives near-uniform logits (zero projections, tiny head)
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@torch.no_grad()
def greedy_by_recompute(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids]))  # (1, T, V), no cache
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def run(engine, prompt, **kwargs):
    return list(engine.generate(prompt, **kwargs))


def columns(steps, row):
    return [col[row] for col, _ in steps], [m[row] for _, m in steps]


PROMPT = [256, 72, 101, 108, 108, 111]  # <|bos|> "Hello"


def test_greedy_cache_matches_full_recompute(model, tokenizer):
    engine = Engine(model, tokenizer)
    steps = run(engine, PROMPT, max_tokens=20, temperature=0.0)
    got, mask = columns(steps, 0)
    want = greedy_by_recompute(model, PROMPT, len(got))
    assert got == want
    assert set(mask) == {1}


def test_greedy_num_samples_rows_equal(model, tokenizer):
    engine = Engine(model, tokenizer)
    steps = run(engine, PROMPT, num_samples=3, max_tokens=20, temperature=0.0)
    single, _ = columns(run(engine, PROMPT, max_tokens=20, temperature=0.0), 0)
    for col, _ in steps:
        assert len(col) == 3
    for row in range(3):
        assert columns(steps, row)[0][: len(single)] == single


def test_sampling_seeded(model, tokenizer):
    engine = Engine(model, tokenizer)
    kw = dict(num_samples=2, max_tokens=24, temperature=1.0)
    a = run(engine, PROMPT, seed=1, **kw)
    b = run(engine, PROMPT, seed=1, **kw)
    c = run(engine, PROMPT, seed=2, **kw)
    assert a == b
    assert a != c
    assert columns(a, 0)[0] != columns(a, 1)[0]  # rows draw different samples


def test_top_k_1_and_tiny_top_p_are_greedy(model, tokenizer):
    engine = Engine(model, tokenizer)
    greedy = run(engine, PROMPT, max_tokens=16, temperature=0.0)
    assert run(engine, PROMPT, max_tokens=16, temperature=1.0, top_k=1, seed=3) == greedy
    assert run(engine, PROMPT, max_tokens=16, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(500, 1)  # (500, 4)
    gen = torch.Generator().manual_seed(0)
    top2 = sample_next(logits, gen, 1.0, top_k=2)
    assert set(top2.tolist()) == {2, 3}
    # probabilities ~ .03 .09 .24 .64: top_p 0.8 keeps {3, 2}, 0.5 keeps only {3}
    assert set(sample_next(logits, gen, 1.0, top_p=0.8).tolist()) == {2, 3}
    assert set(sample_next(logits, gen, 1.0, top_p=0.5).tolist()) == {3}
    assert sample_next(logits[:2], gen, 0.0).tolist() == [3, 3]


class Scripted:
    """Wraps a real model (so the KV cache advances as usual) but replaces its last logits by a
    one-hot on script(row, generated_so_far) for each row."""

    def __init__(self, model, script):
        self.model, self.script = model, script
        self.prompt_len, self.history = None, None
        self.forward = model.forward
        model.forward = self

    def __call__(self, idx, targets=None, *, kv_cache=None, **kwargs):
        logits = self.forward(idx, targets, kv_cache=kv_cache, **kwargs)
        if idx.size(1) > 1:  # prefill
            self.prompt_len, self.history = idx.size(1), [idx[0].tolist()]
        else:
            if len(self.history) == 1 and idx.size(0) > 1:
                self.history = [list(self.history[0]) for _ in range(idx.size(0))]
            for row, token in zip(self.history, idx[:, 0].tolist()):
                row.append(token)
        logits = torch.full_like(logits, -10.0)
        for b in range(logits.size(0)):
            h = self.history[min(b, len(self.history) - 1)]
            logits[b, -1, self.script(b, h[self.prompt_len:])] = 10.0
        return logits

    def restore(self):
        self.model.forward = self.forward


@pytest.fixture
def scripted(tokenizer):
    wrappers = []

    def make(script):
        w = Scripted(tiny_model(1), script)
        wrappers.append(w)
        return w.model

    yield make
    for w in wrappers:
        w.restore()


def test_stops_at_assistant_end_per_row(tokenizer, scripted):
    end = tokenizer.encode_special("<|assistant_end|>")
    # row b writes b + 1 letters "a" then <|assistant_end|>
    model = scripted(lambda b, gen: 97 if len(gen) <= b else end)
    engine = Engine(model, tokenizer)
    steps = run(engine, PROMPT, num_samples=3, max_tokens=50, temperature=0.0)
    assert len(steps) == 4  # ends when the last row is done, not at max_tokens
    assert columns(steps, 0) == ([97, end, PAD_TOKEN, PAD_TOKEN], [1, 1, 0, 0])
    assert columns(steps, 2) == ([97, 97, 97, end], [1, 1, 1, 1])
    results, masks = engine.generate_batch(PROMPT, num_samples=3, max_tokens=50, temperature=0.0)
    assert results == [[97], [97, 97], [97, 97, 97]]
    assert masks == [[1], [1, 1], [1, 1, 1]]


def test_stops_at_bos(tokenizer, scripted):
    model = scripted(lambda b, gen: 98 if len(gen) < 2 else tokenizer.bos_token_id)
    results, _ = Engine(model, tokenizer).generate_batch(PROMPT, max_tokens=50, temperature=0.0)
    assert results == [[98, 98]]


def test_max_tokens_and_position_limit(tokenizer, scripted):
    model = scripted(lambda b, gen: 97)
    engine = Engine(model, tokenizer)
    assert len(run(engine, PROMPT, max_tokens=7, temperature=0.0)) == 7
    assert run(engine, PROMPT, max_tokens=0) == []
    limit = model.cos.size(1)
    long_prompt = [97] * (limit - 5)
    assert len(run(engine, long_prompt, max_tokens=100, temperature=0.0)) == 5  # clipped, no overflow
    with pytest.raises(ValueError, match="at most"):
        run(engine, [97] * limit, max_tokens=1)


def tool_script(tokenizer, expression: str):
    start, stop = tokenizer.encode_special("<|python_start|>"), tokenizer.encode_special("<|python_end|>")
    out_end, end = tokenizer.encode_special("<|output_end|>"), tokenizer.encode_special("<|assistant_end|>")
    plan = [start, *tokenizer.encode(expression), stop]

    def script(b, gen):
        if len(gen) < len(plan):
            return plan[len(gen)]
        if out_end not in gen:
            return 120  # "x": must be overridden by the forced output tokens
        return 65 if gen[-1] == out_end else end  # "A" after the output, then stop

    return plan, script


@pytest.mark.parametrize("expression, output", [("2+3", "5"), ("1/0", CALC_ERROR_PREFIX + "division by zero")])
def test_tool_use(tokenizer, scripted, expression, output):
    plan, script = tool_script(tokenizer, expression)
    engine = Engine(scripted(script), tokenizer)
    forced = [
        tokenizer.encode_special("<|output_start|>"),
        *tokenizer.encode(output),
        tokenizer.encode_special("<|output_end|>"),
    ]
    for num_samples in (1, 2):
        results, masks = engine.generate_batch(PROMPT, num_samples=num_samples, max_tokens=60, temperature=0.0)
        for row, mask in zip(results, masks):
            assert row == plan + forced + [65]
            assert mask == [1] * len(plan) + [0] * len(forced) + [1]


def test_greedy_continuation(model, tokenizer):
    text = greedy_continuation(model, tokenizer, "Hello", 10)
    ids = tokenizer.encode("Hello", prepend="<|bos|>")
    want = greedy_by_recompute(model, ids, 10)
    stops = {tokenizer.bos_token_id, tokenizer.encode_special("<|assistant_end|>")}
    cut = next((i for i, t in enumerate(want) if t in stops), len(want))
    assert text == tokenizer.decode(want[:cut])
    assert not model.training


def test_bad_options(model, tokenizer):
    engine = Engine(model, tokenizer)
    for kwargs in ({"num_samples": 0}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"max_tokens": -1}):
        with pytest.raises(ValueError):
            engine.generate(PROMPT, **kwargs)  # raised at the call, before iterating
    for tokens in ([], [1, 265], [-1], [1.0]):
        with pytest.raises(ValueError):
            engine.generate(tokens)


def test_load_engine_missing_checkpoint():
    with pytest.raises(FileNotFoundError, match="no sft checkpoint"):
        load_engine("sft", device="cpu")


def test_load_engine_round_trip(model, tokenizer, base_dir):
    ck.save_checkpoint(ck.checkpoint_dir("sft", tag="d2"), 5, model_state=model.state_dict(),
                       optimizer_states=None, meta={"model_config": dataclasses.asdict(model.config)}, rng=False)
    tokenizer.save(base_dir / "tokenizer")
    engine = load_engine("sft", device="cpu")
    kw = dict(max_tokens=12, temperature=0.0)
    assert engine.generate_batch(PROMPT, **kw) == Engine(model, tokenizer).generate_batch(PROMPT, **kw)
