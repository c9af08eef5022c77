"""The code paths a CUDA run takes, exercised on CPU (CI has no GPU).

- torch.compile of the training step of every phase: no graph break inside GPT.forward, and a
  bounded number of compilations over 50 steps of the batch shapes each phase produces (base and
  mid: one fixed shape; SFT and RL: lengths and batch sizes that vary, compiled with dynamic shapes,
  which must not recompile per batch). Dynamo decides graphs, breaks and recompilations before any
  backend runs, so these counts use the cheap aot_eager backend (dynamo + AOT autograd, no codegen);
  one slow test runs inductor itself, which also compiles for CPU.
- bf16: autocast training steps (rotary tables, fp32 loss), generation with a bf16 KV cache and with
  bf16 weights, Muon's Newton-Schulz iteration in bf16.
"""

import math

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from nanochat.common import autocast, resolve_dtype
from nanochat.gpt import GPT, GPTConfig
from nanochat.optim import build_optimizers, zeropower_via_newtonschulz

SEQ, VOCAB = 64, 256


def tiny_model(seed: int = 0, n_layer: int = 2) -> GPT:
    """4 query heads over 2 key/value heads (the GQA path), 256 tokens."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(sequence_len=SEQ, vocab_size=VOCAB, n_layer=n_layer, n_embd=64, n_head=4, n_kv_head=2))


def batch(B: int, T: int, seed: int = 0, ignore: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (B, T), generator=g)
    y = torch.randint(0, VOCAB, (B, T), generator=g)
    if ignore:  # chat targets: the prompt and the padding are -1
        y[:, : T // 3] = -1
    return x, y


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---- graph breaks


@pytest.mark.parametrize("case", ["train_loss", "train_loss_bf16", "chunked_loss_bf16", "token_losses", "logits"])
def test_gpt_forward_compiles_to_one_graph(case):
    """Every way the loops call the model traces into one graph: a break would split the step into
    pieces with Python between them (and, on CUDA, lose the fusion torch.compile is there for)."""
    model = tiny_model()
    x, y = batch(2, 16, ignore=True)
    kwargs, amp = {}, autocast("cpu", "fp32")
    if case in ("train_loss_bf16", "chunked_loss_bf16"):
        amp = torch.autocast("cpu", dtype=torch.bfloat16)  # CUDA's dtype: the head loss a GPU runs
    if case == "chunked_loss_bf16":
        model.loss_chunk_elements = 8 * VOCAB  # 4 chunks of 8 rows, each under activation checkpointing
    if case == "token_losses":
        kwargs = {"loss_reduction": "none"}  # RL's per-token losses
    args = (x,) if case == "logits" else (x, y)
    with amp:
        explained = torch._dynamo.explain(model)(*args, **kwargs)
    assert explained.graph_break_count == 0, [str(r) for r in explained.break_reasons]
    assert explained.graph_count == 1


# ---- recompilations over a phase's batch shapes


def compiled_steps(shapes, *, dynamic: bool, reduction: str = "mean", ignore: bool = False):
    """Run forward + backward + optimizer step of the compiled model on batches of these (B, T)
    shapes; returns (graphs compiled, losses). One layer: compilation time grows with depth, the
    guards do not."""
    model = tiny_model(n_layer=1)
    counter = CompileCounterWithBackend("aot_eager")
    fwd = torch.compile(model, backend=counter, dynamic=dynamic)
    optimizers = build_optimizers(model.parameter_groups(), model_dim=model.config.n_embd)
    losses = []
    for i, (B, T) in enumerate(shapes):
        x, y = batch(B, T, seed=i, ignore=ignore)
        loss = fwd(x, y, loss_reduction=reduction)
        if reduction == "none":
            loss = loss.sum() / (y >= 0).sum()  # RL: the advantage-weighted sum, here with advantage 1
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    # dynamo also hands the backend an empty graph for the module's call wrapper: count real ones
    return sum(1 for gm in counter.graphs if len(gm.graph.nodes)), losses


def varied_shapes(n: int, batch_sizes: tuple[int, ...], seed: int = 0) -> list[tuple[int, int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, SEQ, (n,), generator=g).tolist()
    return [(batch_sizes[i % len(batch_sizes)], t) for i, t in enumerate(lengths)]


def test_base_and_mid_compile_once_for_their_fixed_shape():
    frames, losses = compiled_steps([(2, 32)] * 50, dynamic=False)
    assert frames == 1
    assert all(math.isfinite(v) for v in losses)


def test_sft_varied_lengths_compile_once():
    """SFT pads each batch to its own longest conversation: 50 steps see ~40 distinct lengths and,
    at the end of an epoch, a smaller batch. With dynamic shapes one graph serves them all (before the
    fix in GPT._fused_loss_ok the CPU loss recompiled for every length and hit dynamo's limit of 8)."""
    shapes = varied_shapes(50, (4, 4, 4, 2))
    assert len({t for _, t in shapes}) > 20
    frames, losses = compiled_steps(shapes, dynamic=True, reduction="sum", ignore=True)
    assert frames == 1, f"{frames} compilations for 50 SFT batches"
    assert all(math.isfinite(v) for v in losses)


def test_rl_varied_lengths_compile_once():
    """RL forwards chunks of sampled sequences of varying length for per-token losses."""
    shapes = varied_shapes(50, (8, 8, 3))
    frames, losses = compiled_steps(shapes, dynamic=True, reduction="none", ignore=True)
    assert frames == 1, f"{frames} compilations for 50 RL chunks"
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.slow
def test_inductor_training_steps_match_eager():
    """inductor (C++ codegen on CPU) trains like eager: the same losses over a few optimizer steps."""
    curves = []
    for compile_it in (False, True):
        model = tiny_model()
        fwd = torch.compile(model) if compile_it else model
        optimizers = build_optimizers(model.parameter_groups(), model_dim=model.config.n_embd)
        x, y = batch(4, 32)
        curve = []
        for _ in range(4):
            loss = fwd(x, y)
            loss.backward()
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            curve.append(loss.item())
        curves.append(curve)
    eager, compiled = curves
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled[-1] < compiled[0]


# ---- bf16


def bf16_supported() -> bool:
    try:
        resolve_dtype("bf16", "cpu")
    except ValueError:
        return False
    return True


def test_bf16_autocast_training_steps_follow_fp32():
    """A GPU run's precision: matmuls in bf16, rotary tables kept fp32, logits and the loss in fp32."""
    curves = {}
    for dtype in ("fp32", "bf16"):
        model = tiny_model()
        optimizers = build_optimizers(model.parameter_groups(), model_dim=model.config.n_embd)
        x, y = batch(4, 32)
        curve = []
        for _ in range(6):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss = model(x, y)
                if dtype == "bf16":
                    assert loss.dtype == torch.float32
                    assert model(x[:, :4]).dtype == torch.float32  # logits
            loss.backward()
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            curve.append(loss.item())
        assert model.cos.dtype == model.sin.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the master weights
        curves[dtype] = curve
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert all(math.isfinite(v) for v in bf16)
    assert bf16[-1] < bf16[0] - 0.5  # it learns the repeated batch
    assert bf16[0] == pytest.approx(fp32[0], abs=0.02)  # ln(256) = 5.55 at init either way
    assert bf16 == pytest.approx(fp32, abs=0.25)


def test_rotary_in_bf16_matches_fp32_rotation():
    from nanochat.gpt import apply_rotary, rotary_tables

    cos, sin = rotary_tables(SEQ, 16, 10000.0)
    x = torch.randn(2, SEQ, 2, 16)
    rotated = apply_rotary(x.bfloat16(), cos, sin)
    assert rotated.dtype == torch.bfloat16
    torch.testing.assert_close(rotated.float(), apply_rotary(x, cos, sin), atol=0.05, rtol=0.02)


def byte_tokenizer():
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def engine_cache_dtypes(monkeypatch, engine, prompt) -> tuple[list[torch.dtype], list[int]]:
    """The dtypes of the KV caches the engine builds while generating greedily, and the tokens."""
    import nanochat.engine as engine_module

    seen = []
    real = engine_module.KVCache

    def spy(*args, **kwargs):
        cache = real(*args, **kwargs)
        seen.append(cache.dtype)
        return cache

    monkeypatch.setattr(engine_module, "KVCache", spy)
    (tokens,), _ = engine.generate_batch(prompt, max_tokens=12, temperature=0.0)
    return seen, tokens


def chat_model(tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(sequence_len=SEQ, vocab_size=tokenizer.n_vocab, n_layer=2, n_embd=64, n_head=4,
                         n_kv_head=2)).eval()


def test_engine_with_bf16_weights_keeps_its_cache_in_bf16(monkeypatch):
    from nanochat.engine import Engine

    tokenizer = byte_tokenizer()
    model = chat_model(tokenizer)
    prompt = tokenizer.encode("hello there", prepend=tokenizer.bos_token_id)
    _, fp32_tokens = engine_cache_dtypes(monkeypatch, Engine(model, tokenizer), prompt)
    dtypes, tokens = engine_cache_dtypes(monkeypatch, Engine(model.to(torch.bfloat16), tokenizer), prompt)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert len(tokens) == len(fp32_tokens) == 12 and all(0 <= t < tokenizer.n_vocab for t in tokens)
    assert model.cos.dtype == torch.bfloat16  # .to() casts buffers too: apply_rotary casts to x's dtype anyway


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16")
def test_engine_with_bf16_autocast_matches_fp32_greedy_decoding(monkeypatch):
    """--dtype=bf16 as a GPU runs it: fp32 weights, bf16 autocast, a bf16 cache."""
    from nanochat.engine import Engine

    tokenizer = byte_tokenizer()
    model = chat_model(tokenizer)
    prompt = tokenizer.encode("hello there", prepend=tokenizer.bos_token_id)
    _, fp32_tokens = engine_cache_dtypes(monkeypatch, Engine(model, tokenizer, dtype="fp32"), prompt)
    dtypes, tokens = engine_cache_dtypes(monkeypatch, Engine(model, tokenizer, dtype="bf16"), prompt)
    assert set(dtypes) == {torch.bfloat16}
    # a random model's top logits are close together, so bf16 may pick another token late on;
    # the first few greedy tokens agree
    assert tokens[:3] == fp32_tokens[:3]


def test_newton_schulz_in_bf16_orthogonalises_like_fp32():
    """Muon's iteration runs in bf16 on CUDA; the same iteration in bf16 on CPU gives singular values
    in the same band around 1 and nearly the fp32 result."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(3, 64, 256, generator=g)
    X16 = zeropower_via_newtonschulz(G, dtype=torch.bfloat16)
    X32 = zeropower_via_newtonschulz(G)
    assert X16.dtype == torch.bfloat16 and X32.dtype == torch.float32
    s = torch.linalg.svdvals(X16.float())
    assert s.min() > 0.5 and s.max() < 1.3, (s.min().item(), s.max().item())
    assert (X16.float() - X32).norm() / X32.norm() < 0.05


def test_resolve_dtype_on_cpu():
    assert resolve_dtype(None, "cpu") == "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_dtype(None, "cpu", training=True) == ("bf16" if native else "fp32")
    with pytest.raises(ValueError, match="fp16"):
        resolve_dtype("fp16", "cpu")
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        assert resolve_dtype("bf16", "cpu") == "bf16"
    else:
        with pytest.raises(ValueError, match="bf16"):
            resolve_dtype("bf16", "cpu")
