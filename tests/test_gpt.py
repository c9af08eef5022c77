"""Tests of nanochat.gpt and nanochat.kv_cache: sizes, parity with a slow reference, the chunked
loss, and cached decoding against full recompute. Tiny fp32 models on the CPU."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import GPT, LOSS_CHUNK_ELEMENTS, GPTConfig
from nanochat.kv_cache import KVCache

TINY = dict(sequence_len=64, vocab_size=256, n_layer=2, n_embd=64, n_head=4, n_kv_head=4)
TINY_GQA = dict(TINY, n_kv_head=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine cannot make the threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, randomize: bool = True, **overrides) -> GPT:
    """A tiny model; randomize replaces the zero/near-zero init so every path carries signal."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                std = 1.0 if name == "wte.weight" else 2.0 / math.sqrt(p.shape[1])
                p.normal_(0.0, std)
    return model.eval()


def new_cache(model: GPT, batch_size: int, max_len: int) -> KVCache:
    cfg = model.config
    return KVCache(batch_size, cfg.n_kv_head, cfg.head_dim, cfg.n_layer, max_len)


# ---- config and sizes ----


def test_d20_matches_reference_size_without_allocating():
    cfg = GPTConfig.from_depth(20, vocab_size=65536, sequence_len=2048)
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (1280, 10, 10, 128)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.lm_head.weight.is_meta
    assert model.num_params() == 560_988_160
    matmul = 560_988_160 - 65536 * 1280  # everything but the embedding lookup
    assert model.estimate_flops() == 6 * matmul + 12 * 20 * 10 * 128 * 2048
    # ~3.9e19 FLOPs for the 11.2B-token d20 run (karpathy/nanochat's speedrun report)
    assert 3.8e19 < model.estimate_flops() * 21_400 * 524_288 < 4.0e19


def test_from_depth_rounds_width_up_to_whole_heads():
    d4 = GPTConfig.from_depth(4, vocab_size=512, sequence_len=64)
    assert (d4.n_embd, d4.n_head, d4.head_dim, d4.n_layer) == (256, 2, 128, 4)
    d3 = GPTConfig.from_depth(3, vocab_size=512, sequence_len=64)  # 192 -> 256
    assert (d3.n_embd, d3.n_head) == (256, 2)
    gqa = GPTConfig.from_depth(2, 256, 32, aspect_ratio=64, head_dim=16, n_kv_head=2)
    assert (gqa.n_embd, gqa.n_head, gqa.n_kv_head, gqa.kv_group) == (128, 8, 2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=100, n_head=3), "divisible"),
        (dict(n_embd=96, n_head=32), "even"),  # head_dim 3
        (dict(n_head=4, n_kv_head=3), "divide"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(sequence_len=2.5), "sequence_len"),
        (dict(softcap=-1.0), "softcap"),
        (dict(rope_base=0.0), "rope_base"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **kwargs})


def test_config_round_trips_through_asdict():
    cfg = GPTConfig.from_depth(4, 512, 64, n_kv_head=1)
    assert GPTConfig(**dataclasses.asdict(cfg)) == cfg  # what checkpoint metadata does
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_head = 3  # validated once, so it must not change afterwards


def test_bad_from_depth_raises():
    with pytest.raises(ValueError, match="depth"):
        GPTConfig.from_depth(0, 256, 64)
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig.from_depth(4, 256, 64, head_dim=64, n_kv_head=3)  # 4 heads


def test_parameter_groups_partition_all_parameters():
    model = make_model(randomize=False)
    groups = model.parameter_groups()
    assert set(groups) == {"matrix", "embedding", "unembedding", "scalar"}
    grouped = [id(p) for ps in groups.values() for p in ps]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert groups["embedding"] == [model.wte.weight] and groups["unembedding"] == [model.lm_head.weight]
    assert all(p.ndim == 2 for p in groups["matrix"]) and len(groups["matrix"]) == 6 * TINY["n_layer"]


# ---- init ----


def test_init_is_deterministic_and_meta_path_matches():
    cfg = GPTConfig(**TINY)
    torch.manual_seed(1)
    a = GPT(cfg)
    torch.manual_seed(1)
    b = GPT(cfg)
    for name, pa in a.state_dict().items():
        assert torch.equal(pa, b.state_dict()[name]), name
    with torch.device("meta"):
        c = GPT(cfg)  # nothing allocated, nothing initialised
    c.to_empty(device="cpu")
    torch.manual_seed(2)
    a.init_weights()
    torch.manual_seed(2)
    c.init_weights()  # also rebuilds the rotary buffers to_empty left uninitialised
    for name, pa in a.state_dict().items():
        assert torch.equal(pa, c.state_dict()[name]), name
    assert torch.equal(a.cos, c.cos) and torch.equal(a.sin, c.sin)
    assert "cos" not in a.state_dict()  # derived, not checkpointed
    # zero output projections: every block starts as the identity on the residual stream
    assert all(
        blk.attn.c_proj.weight.abs().sum() == 0 and blk.mlp.c_proj.weight.abs().sum() == 0 for blk in a.blocks
    )


def test_loss_at_init_is_ln_vocab():
    model = make_model(randomize=False, vocab_size=512)
    idx = torch.randint(0, 512, (2, 64))
    loss = model(idx, idx.roll(-1, 1))
    assert abs(loss.item() - math.log(512)) < 0.01


# ---- forward ----


def test_forward_shapes_and_dtypes():
    model = make_model()
    idx = torch.randint(0, 256, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 256) and logits.dtype == torch.float32
    assert logits.abs().max() <= model.config.softcap
    assert model(idx, idx).shape == ()
    assert model(idx, idx, loss_reduction="sum").shape == ()
    assert model(idx, idx, loss_reduction="none").shape == (3, 17)
    with pytest.raises(ValueError, match="loss_reduction"):
        model(idx, idx, loss_reduction="avg")


def rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The architecture written out the slow way: complex-number rotary, explicit softmax attention,
    GQA by repeat_interleave of keys/values."""
    cfg = model.config
    B, T = idx.shape
    H, Hk, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    theta = torch.arange(T)[:, None] * cfg.rope_base ** (-torch.arange(0, D, 2) / D)  # (T, D/2)
    rot = torch.polar(torch.ones_like(theta), theta)[None, :, None, :]  # (1, T, 1, D/2)

    def rotary(x):  # pairs (x[i], x[i + D/2]) as complex numbers
        z = torch.complex(x[..., : D // 2], x[..., D // 2 :]) * rot
        return torch.cat((z.real, z.imag), -1)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = rms(model.wte.weight[idx])
    for blk in model.blocks:
        h = rms(x)
        q = rotary(rms((h @ blk.attn.c_q.weight.T).view(B, T, H, D))).transpose(1, 2)
        k = rotary(rms((h @ blk.attn.c_k.weight.T).view(B, T, Hk, D))).transpose(1, 2)
        v = (h @ blk.attn.c_v.weight.T).view(B, T, Hk, D).transpose(1, 2)
        k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + y @ blk.attn.c_proj.weight.T
        x = x + torch.relu(rms(x) @ blk.mlp.c_fc.weight.T).square() @ blk.mlp.c_proj.weight.T
    logits = rms(x) @ model.lm_head.weight.T
    return cfg.softcap * torch.tanh(logits / cfg.softcap) if cfg.softcap else logits


@pytest.mark.parametrize("cfg", [TINY, TINY_GQA, dict(TINY, softcap=0.0)], ids=["mha", "gqa", "nocap"])
def test_forward_matches_slow_reference(cfg):
    model = make_model(**cfg)
    idx = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(model, idx), rtol=1e-5, atol=1e-5)


# ---- chunked loss ----


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpointed"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunked_loss_and_grads_equal_full_logits(reduction, fused, monkeypatch):
    model = make_model(vocab_size=256)
    # fused: the CPU training path (_HeadLossSum); checkpointed: the path CUDA and reduction="none" take
    monkeypatch.setattr(model, "_fused_loss_ok", lambda x: fused)
    model.loss_chunk_elements = 7 * 256  # 7 rows a chunk: 64 rows -> 10 chunks, the last short
    idx = torch.randint(0, 256, (2, 32))
    targets = idx.roll(-1, 1)
    targets[0, :5] = -1
    targets[1, -3:] = -1
    weights = torch.rand(2, 32)  # a generic upstream gradient for the per-token losses

    def run(chunked: bool):
        model.zero_grad()
        if chunked:
            out = model(idx, targets, loss_reduction=reduction)
        else:
            flat = F.cross_entropy(
                model(idx).view(-1, 256),
                targets.view(-1),
                ignore_index=-1,
                reduction="none" if reduction == "none" else "sum",
            )
            out = flat.view(2, 32) if reduction == "none" else flat
            if reduction == "mean":
                out = out / (targets != -1).sum()
        (out * weights if reduction == "none" else out).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_c, grads_c = run(True)
    loss_f, grads_f = run(False)
    torch.testing.assert_close(loss_c, loss_f, rtol=1e-5, atol=1e-6)
    for name in grads_f:
        torch.testing.assert_close(grads_c[name], grads_f[name], rtol=1e-5, atol=1e-5)  # grads are O(1-10)
    if reduction == "none":
        assert (loss_c[targets == -1] == 0).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpointed"])
def test_chunked_loss_never_saves_full_logits(fused, monkeypatch):
    assert LOSS_CHUNK_ELEMENTS >= 2**20  # the production knob is a module constant
    V = 512  # not 4 x n_embd, so no MLP activation has the logits' last dimension
    model = make_model(vocab_size=V).train()
    monkeypatch.setattr(model, "_fused_loss_ok", lambda x: fused)
    idx = torch.randint(0, V, (4, 64))
    N = idx.numel()

    def largest_saved_logits(chunk_elements: int) -> int:
        model.loss_chunk_elements = chunk_elements
        sizes = []

        def pack(t):
            if t.ndim >= 1 and t.shape[-1] == V:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(idx, idx)
        loss.backward()
        return max(sizes, default=0)

    if fused:  # gradients are formed inside forward: nothing vocabulary-wide is saved, chunked or not
        assert largest_saved_logits(N * V) == 0 and largest_saved_logits(16 * V) == 0
        return
    assert largest_saved_logits(N * V) >= N * V  # one chunk: autograd keeps the (N, V) logits
    assert largest_saved_logits(16 * V) == 0  # chunked: checkpointed chunks save no logits at all


def test_all_ignored_mean_loss_is_zero_not_nan():
    model = make_model()
    idx = torch.randint(0, 256, (1, 8))
    assert model(idx, torch.full_like(idx, -1)).item() == 0.0


def test_one_adamw_step_reduces_loss():
    model = make_model(randomize=False, vocab_size=512).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 512, (4, 32))
    targets = idx.roll(-1, 1)
    before = model(idx, targets)
    before.backward()
    opt.step()
    assert model(idx, targets).item() < before.item() - 0.01


# ---- KV cache ----


def greedy_full(model, prompt, steps):
    ids, tokens, logits = prompt, [], []
    for _ in range(steps):
        last = model(ids)[:, -1]  # (B, V)
        nxt = last.argmax(-1)
        tokens.append(nxt)
        logits.append(last)
        ids = torch.cat((ids, nxt[:, None]), 1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def greedy_cached(model, prompt, steps, cache):
    last = model(prompt, kv_cache=cache)[:, -1]
    tokens, logits = [], []
    for _ in range(steps):
        nxt = last.argmax(-1)
        tokens.append(nxt)
        logits.append(last)
        last = model(nxt[:, None], kv_cache=cache)[:, -1]
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("cfg", [TINY, TINY_GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_cached_greedy_decode_equals_full_recompute(cfg, batch):
    model = make_model(**cfg)
    prompt = torch.randint(0, 256, (batch, 9))
    tok_ref, logits_ref = greedy_full(model, prompt, 20)
    cache = new_cache(model, batch, 9 + 20)
    tok, logits = greedy_cached(model, prompt, 20, cache)
    assert torch.equal(tok, tok_ref)
    torch.testing.assert_close(logits, logits_ref, rtol=0, atol=1e-5)
    assert cache.pos == 9 + 20  # the prompt and every sampled token
    assert len(set(tok_ref.flatten().tolist())) > 3  # the randomised model is not degenerate


@torch.no_grad()
def test_prefill_in_chunks_equals_one_prefill():
    model = make_model(**TINY_GQA)
    prompt = torch.randint(0, 256, (2, 12))
    one = new_cache(model, 2, 16)
    logits_one = model(prompt, kv_cache=one)
    parts = new_cache(model, 2, 16)
    logits_parts = torch.cat([model(prompt[:, a:b], kv_cache=parts) for a, b in ((0, 5), (5, 6), (6, 12))], 1)
    torch.testing.assert_close(logits_parts, logits_one, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_one, model(prompt), rtol=0, atol=1e-5)
    assert parts.pos == one.pos == 12
    torch.testing.assert_close(parts.k[:, :, :, :12], one.k[:, :, :, :12], rtol=0, atol=1e-5)
    torch.testing.assert_close(parts.v[:, :, :, :12], one.v[:, :, :, :12], rtol=0, atol=1e-5)
    nxt = torch.tensor([[3], [4]])
    torch.testing.assert_close(model(nxt, kv_cache=parts), model(nxt, kv_cache=one), rtol=0, atol=1e-5)
    one.reset()
    assert one.pos == 0
    torch.testing.assert_close(model(prompt[:, :4], kv_cache=one), logits_one[:, :4], rtol=0, atol=1e-5)


@torch.no_grad()
def test_cache_overflow_raises_before_writing():
    model = make_model()
    cache = new_cache(model, 1, 10)
    model(torch.randint(0, 256, (1, 8)), kv_cache=cache)
    snapshot = cache.k.clone()
    with pytest.raises(ValueError, match="overflow.*max_len=10"):
        model(torch.randint(0, 256, (1, 3)), kv_cache=cache)
    assert cache.pos == 8 and torch.equal(cache.k, snapshot)
    with pytest.raises(ValueError, match="kv_cache"):
        model(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    big = new_cache(model, 1, 1000)
    big.pos = 64 * 10 - 1  # the last position the rotary tables cover
    with pytest.raises(ValueError, match="rotary"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=big)
    with pytest.raises(ValueError, match="B=1"):
        model(torch.zeros(2, 1, dtype=torch.long), kv_cache=new_cache(model, 1, 4))


@torch.no_grad()
def test_expand_one_prefill_into_many_continuations():
    model = make_model(**TINY_GQA)
    prompt = torch.randint(0, 256, (1, 7))
    single = new_cache(model, 1, 7)
    model(prompt, kv_cache=single)
    many = single.expand(3, max_len=7 + 10)
    assert (many.batch_size, many.pos, many.max_len) == (3, 7, 17)
    firsts = torch.tensor([[11], [22], [33]])  # three different sampled continuations
    last = model(firsts, kv_cache=many)[:, -1]
    tokens = []
    for _ in range(9):
        nxt = last.argmax(-1)
        tokens.append(nxt)
        last = model(nxt[:, None], kv_cache=many)[:, -1]
    tok_ref, _ = greedy_full(model, torch.cat((prompt.expand(3, -1), firsts), 1), 9)
    assert torch.equal(torch.stack(tokens, 1), tok_ref)
    # prefill_from into an existing cache of the same batch size copies row by row
    same = new_cache(model, 3, 17)
    same.prefill_from(many)
    assert same.pos == many.pos and torch.equal(same.k, many.k)
    with pytest.raises(ValueError, match="batch"):
        new_cache(model, 2, 17).prefill_from(many)


@torch.no_grad()
def test_bf16_autocast_with_fp32_cache_runs():
    model = make_model()
    cache = new_cache(model, 1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 256, (1, 4)), kv_cache=cache)
        logits = model(torch.randint(0, 256, (1, 1)), kv_cache=cache)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_last_only_logits_equal_the_last_position_of_all_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=300, n_layer=2, n_embd=64, n_head=2, n_kv_head=2)).eval()
    idx = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        full = model(idx)  # (2, 17, 300)
        last = model(idx, last_only=True)  # (2, 1, 300)
    assert last.shape == (2, 1, 300)
    # same maths; a 1-row matmul may block differently from a 17-row one, hence a tolerance, not equality
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
