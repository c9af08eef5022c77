"""Importing upstream (karpathy/nanochat) checkpoints: a folder this test writes in upstream's format,
with its real key names (and torch.compile's `_orig_mod.` prefix), a pickled tiktoken Encoding and
token_bytes.pt; and tampered pickles, which must be refused without running anything."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import pytest
import tiktoken
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.hf_interop import FormatError, to_hf_state
from nanochat.tokenizer import Tokenizer
from nanochat.upstream_import import load_tiktoken_pickle, read_upstream_checkpoint, read_upstream_tokenizer
from tests.conftest import REPO_ROOT, subprocess_env

TEXT = "Upstream nanochat wrote this checkpoint; the import must keep every token. 안녕하세요 🙂 x = 42\n"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [TEXT * 5, "the model and the tokenizer " * 10, "Numbers 12 345 and words, said the user. " * 8]
    return Tokenizer.train_from_iterator(corpus, 360, num_threads=1)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(3)
    config = GPTConfig(sequence_len=128, vocab_size=tokenizer.n_vocab, n_layer=2, n_embd=64, n_head=4, n_kv_head=2)
    m = GPT(config)
    with torch.no_grad():
        for block in m.blocks:
            block.attn.c_proj.weight.normal_(0.0, 0.1)
            block.mlp.c_proj.weight.normal_(0.0, 0.1)
        m.lm_head.weight.normal_(0.0, 0.3)
        m.wte.weight.copy_(m.wte.weight.bfloat16().float())  # upstream stores the embedding in bf16
    return m.eval()


def upstream_state(model: GPT, pad_rows: int = 0) -> dict[str, torch.Tensor]:
    """The model as upstream's compiled GPT's state_dict: NanoChat's rotary convention (upstream's),
    upstream's key names under `_orig_mod.`, a bf16 embedding, the vocabulary padded by pad_rows."""
    hf = to_hf_state(model.state_dict(), model.config)
    out = {"_orig_mod.transformer.wte.weight": hf["model.embed_tokens.weight"].bfloat16(),
           "_orig_mod.lm_head.weight": hf["lm_head.weight"]}
    for i in range(model.config.n_layer):
        for ours, theirs in (("attn.c_q", "self_attn.q_proj"), ("attn.c_k", "self_attn.k_proj"),
                             ("attn.c_v", "self_attn.v_proj"), ("attn.c_proj", "self_attn.o_proj"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"_orig_mod.transformer.h.{i}.{ours}.weight"] = hf[f"model.layers.{i}.{theirs}.weight"]
    if pad_rows:
        for key in ("_orig_mod.transformer.wte.weight", "_orig_mod.lm_head.weight"):
            out[key] = torch.cat([out[key], torch.randn(pad_rows, out[key].size(1)).to(out[key].dtype)])
    return out


def write_upstream(base, model: GPT, tokenizer: Tokenizer, step: int = 650, pad_rows: int = 0, **extra_config):
    """Upstream's base dir: tokenizer/{tokenizer.pkl, token_bytes.pt}, chatsft_checkpoints/d2/{model,meta}_<step>."""
    tok_dir, ckpt = base / "tokenizer", base / "chatsft_checkpoints" / "d2"
    tok_dir.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    specials = tokenizer.special_tokens
    n_ranks = tokenizer.n_vocab - len(specials)
    enc = tiktoken.Encoding("rustbpe", pat_str=tokenizer.pattern, special_tokens=specials,
                            mergeable_ranks={tokenizer.id_to_token_bytes(i): i for i in range(n_ranks)})
    (tok_dir / "tokenizer.pkl").write_bytes(pickle.dumps(enc))  # what upstream's save does
    torch.save(torch.tensor(tokenizer.token_bytes_lengths(), dtype=torch.int32), tok_dir / "token_bytes.pt")
    torch.save(upstream_state(model, pad_rows), ckpt / f"model_{step:06d}.pt")
    c = model.config
    model_config = {"sequence_len": c.sequence_len, "vocab_size": c.vocab_size, "n_layer": c.n_layer,
                    "n_head": c.n_head, "n_kv_head": c.n_kv_head, "n_embd": c.n_embd, **extra_config}
    (ckpt / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, "val_bpb": 0.81, "model_config": model_config}))
    return ckpt


def greedy(model, prompt, steps):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert len(set(ids[len(prompt):])) > 3  # not a degenerate repeat of one token
    return ids[len(prompt):]


class _Evil:
    """Pickles to a call of os.system that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_import_generates_the_same_greedy_tokens(tmp_path, monkeypatch, model, tokenizer):
    from nanochat.engine import Engine, load_engine

    ckpt = write_upstream(tmp_path / "upstream", model, tokenizer)
    dst = tmp_path / "ours"
    done = subprocess.run([sys.executable, "-m", "scripts.import_checkpoint", str(ckpt), "--phase=sft"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(NANOCHAT_BASE_DIR=str(dst)))
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(dst))
    engine = load_engine("sft", model_tag="d2", step=650, device="cpu")
    prompt = tokenizer.render_for_completion({"messages": [{"role": "user", "content": "Hello, what is x?"}]})
    (theirs,), _ = engine.generate_batch(prompt, max_tokens=32, temperature=0.0)
    (ours,), _ = Engine(model, tokenizer).generate_batch(prompt, max_tokens=32, temperature=0.0)
    assert theirs == ours  # the engine's reply, stopping where the model says it ends
    assert greedy(engine.model, prompt, 32) == greedy(model, prompt, 32)  # 32 steps, no stop
    for key, tensor in model.state_dict().items():
        assert torch.equal(engine.model.state_dict()[key], tensor), key
    assert engine.tokenizer.encode(TEXT) == tokenizer.encode(TEXT)


def test_padded_vocabulary_rows_are_dropped(tmp_path, model, tokenizer):
    ckpt = write_upstream(tmp_path, model, tokenizer, step=3, pad_rows=5)
    state, config, step, _ = read_upstream_checkpoint(ckpt)
    assert step == 3 and config == dataclasses.replace(model.config)
    assert torch.equal(state["wte.weight"], model.wte.weight) and torch.equal(state["lm_head.weight"], model.lm_head.weight)


def test_tampered_tokenizer_pickle_is_refused_and_runs_nothing(tmp_path, model, tokenizer):
    write_upstream(tmp_path, model, tokenizer)
    marker = tmp_path / "pwned"
    (tmp_path / "tokenizer" / "tokenizer.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(FormatError, match=r"refusing the tokenizer pickle: .*system") as info:
        read_upstream_tokenizer(tmp_path / "tokenizer")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # a real Encoding carrying something else inside its state is refused as well
    payload = pickle.dumps({"x": tiktoken.Encoding("e", pat_str=r"\w+", mergeable_ranks={b"a": 0}, special_tokens={}),
                            "y": _Evil(marker)})
    with pytest.raises(FormatError, match="refusing"):
        load_tiktoken_pickle(payload)
    assert not marker.exists()


def test_tampered_model_file_is_refused_and_runs_nothing(tmp_path, model, tokenizer):
    ckpt = write_upstream(tmp_path, model, tokenizer, step=5)
    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": _Evil(marker)}, ckpt / "model_000005.pt")
    with pytest.raises(FormatError, match="refusing .*model_000005.pt"):
        read_upstream_checkpoint(ckpt)
    assert not marker.exists()


def test_cli_refusal_is_one_line(tmp_path, model, tokenizer):
    ckpt = write_upstream(tmp_path / "up", model, tokenizer)
    (tmp_path / "up" / "tokenizer" / "tokenizer.pkl").write_bytes(pickle.dumps(_Evil(tmp_path / "pwned")))
    done = subprocess.run([sys.executable, "-m", "scripts.import_checkpoint", str(ckpt)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=subprocess_env(NANOCHAT_BASE_DIR=str(tmp_path / "ours")))
    assert done.returncode == 1 and done.stderr.startswith("error: refusing the tokenizer pickle")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "ours" / "chatsft_checkpoints").exists()


def test_newer_upstream_options_are_refused_by_name(tmp_path, model, tokenizer):
    ckpt = write_upstream(tmp_path, model, tokenizer, step=9, window_pattern="SSSL")
    with pytest.raises(FormatError, match="window_pattern"):
        read_upstream_checkpoint(ckpt)
    ckpt = write_upstream(tmp_path / "b", model, tokenizer, step=9)
    state = torch.load(ckpt / "model_000009.pt", weights_only=True)
    state["_orig_mod.resid_lambdas"] = torch.ones(2)
    torch.save(state, ckpt / "model_000009.pt")
    with pytest.raises(FormatError, match="resid_lambdas"):
        read_upstream_checkpoint(ckpt)
