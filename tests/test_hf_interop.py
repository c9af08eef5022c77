"""Export to and import from Hugging Face transformers (NanoChat), checked with the real library on CPU.

A tiny trained tokenizer and a depth-2 GQA model with every weight random (no zero projections, so
every layer matters); the export goes through transformers' own NanoChatForCausalLM and tokenizer.
"""

import inspect
import json
import subprocess
import sys

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.hf_interop import FormatError, read_hf_dir, write_hf_dir
from nanochat.kv_cache import KVCache
from nanochat.tokenizer import Tokenizer
from tests.conftest import REPO_ROOT, subprocess_env

transformers = pytest.importorskip("transformers")

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 2025, and we've 12345 reasons!",
    "korean": "안녕하세요, 세계! 한국어 문장은 이렇게 토큰으로 나뉩니다.",
    "code": "def square(x: int) -> int:\n    return x ** 2  # squares\n\n\tif x != 0:\r\n        pass",
    "emoji": "Rockets 🚀🚀 and faces 🙂 👩‍👩‍👧 — ñ, é, ß…",
    "special": "<|bos|>Hi<|user_end|> and <|assistant_start|>",
}
CORPUS = [TEXTS["english"] * 3, TEXTS["korean"] * 4, TEXTS["code"] * 3, TEXTS["emoji"] * 2,
          "Numbers 1 22 333 4444 and words words words, said the model to the user."] * 4

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}]},
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"},
                  {"role": "assistant", "content": "Hi! 🙂"}, {"role": "user", "content": "안녕?"}]},
    {"messages": [{"role": "user", "content": "Compute 3*7"},
                  {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                                    {"type": "python", "text": "3*7"},
                                                    {"type": "python_output", "text": "21"},
                                                    {"type": "text", "text": " It is 21."}]},
                  {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "reference answer"}]},
]


def _random_model(tokenizer, seed=0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=128, vocab_size=tokenizer.n_vocab, n_layer=2, n_embd=64, n_head=4, n_kv_head=2)
    model = GPT(config)
    with torch.no_grad():
        for block in model.blocks:  # zero-initialised projections would hide every layer's conversion
            block.attn.c_proj.weight.normal_(0.0, 0.1)
            block.mlp.c_proj.weight.normal_(0.0, 0.1)
        model.lm_head.weight.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(CORPUS, 700, num_threads=1)


@pytest.fixture(scope="module")
def model(tokenizer):
    return _random_model(tokenizer)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, tokenizer):
    out = tmp_path_factory.mktemp("export") / "hf"
    write_hf_dir(out, model.state_dict(), model.config, tokenizer, "# test card\n")
    return out


@pytest.fixture(scope="module")
def hf_model(exported):
    return transformers.AutoModelForCausalLM.from_pretrained(exported).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return transformers.AutoTokenizer.from_pretrained(exported)


def _cache_kwargs(hf_model, cache):
    # transformers renamed past_key_values to cache (5.24, the old name deprecated); accept both
    name = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


# ---- the model


def test_config_carries_every_shape_and_option(exported, model, tokenizer):
    cfg = json.loads((exported / "config.json").read_text())
    c = model.config
    assert cfg["architectures"] == ["NanoChatForCausalLM"] and cfg["model_type"] == "nanochat"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["vocab_size"], cfg["max_position_embeddings"]) == (c.n_layer, c.n_embd, c.n_head, c.n_kv_head,
                                                                    c.vocab_size, c.sequence_len)
    assert cfg["rope_parameters"]["rope_theta"] == c.rope_base and cfg["final_logit_softcapping"] == c.softcap
    assert cfg["intermediate_size"] == 4 * c.n_embd and cfg["hidden_act"] == "relu2"
    assert cfg["pad_token_id"] is None  # else NanoChat's embedding would freeze that row in fine-tuning
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id]


def test_transformers_builds_the_model_as_configured(hf_model, model):
    c = model.config
    assert type(hf_model).__name__ == "NanoChatForCausalLM"
    assert hf_model.model.embed_tokens.padding_idx is None
    assert hf_model.lm_head.weight.data_ptr() != hf_model.model.embed_tokens.weight.data_ptr()  # untied
    assert len(hf_model.model.layers) == c.n_layer
    assert hf_model.model.layers[0].self_attn.k_proj.out_features == c.n_kv_head * c.head_dim


def test_logits_match_on_random_and_real_prompts(model, hf_model, tokenizer):
    torch.manual_seed(1)
    random_ids = torch.randint(0, tokenizer.n_vocab, (3, 48))
    real = [tokenizer.render_for_completion(c) for c in CONVERSATIONS] + [tokenizer.encode(t) for t in TEXTS.values()]
    worst = 0.0
    with torch.no_grad():
        diff = (model(random_ids) - hf_model(random_ids).logits).abs().max().item()
        worst = max(worst, diff)
        for ids in real:
            x = torch.tensor([ids])
            ours, theirs = model(x), hf_model(x).logits
            assert ours.shape == theirs.shape
            worst = max(worst, (ours - theirs).abs().max().item())
    print(f"max |logit difference| ours vs transformers: {worst:.3g}")
    assert worst <= 1e-4
    # a wrong rotary sign would still agree at the first position only: make sure positions matter
    with torch.no_grad():
        assert model(random_ids).std() > 0.1


def _greedy_ours(model, prompt, steps):
    cfg = model.config
    cache = KVCache(1, cfg.n_kv_head, cfg.head_dim, cfg.n_layer, len(prompt) + steps, dtype=torch.float32)
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), kv_cache=cache)[:, -1]
        for _ in range(steps):
            out.append(int(logits.argmax(-1)))
            logits = model(torch.tensor([[out[-1]]]), kv_cache=cache)[:, -1]
    return out


def test_greedy_generate_gives_the_same_32_tokens(model, hf_model, tokenizer):
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=32, eos_token_id=None,
                                           pad_token_id=tokenizer.bos_token_id)
    for conversation in CONVERSATIONS:
        prompt = tokenizer.render_for_completion(conversation)
        ours = _greedy_ours(model, prompt, 32)
        with torch.no_grad():
            theirs = hf_model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()
        assert theirs == ours
        assert len(set(ours)) > 3  # not a degenerate repeat of one token


def test_transformers_kv_cache_agrees_with_its_full_forward(hf_model, tokenizer):
    ids = torch.tensor([tokenizer.render_for_completion(CONVERSATIONS[1])])
    with torch.no_grad():
        full = hf_model(ids).logits
        cache = transformers.DynamicCache(config=hf_model.config)
        parts = [hf_model(ids[:, :7], **_cache_kwargs(hf_model, cache)).logits]
        for t in range(7, ids.size(1)):
            parts.append(hf_model(ids[:, t : t + 1], **_cache_kwargs(hf_model, cache)).logits)
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-4


def test_export_import_round_trip_is_bit_exact(exported, model, tokenizer):
    state, config, tok = read_hf_dir(exported)
    assert config == model.config
    original = model.state_dict()
    assert set(state) == set(original)
    for key, tensor in original.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key
    assert tok.pattern == tokenizer.pattern and tok.special_tokens == tokenizer.special_tokens
    assert [tok.id_to_token_bytes(i) for i in range(tok.n_vocab)] == [
        tokenizer.id_to_token_bytes(i) for i in range(tokenizer.n_vocab)]


def test_export_replaces_only_an_earlier_export(tmp_path, model, tokenizer):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an exported NanoChat folder"):
        write_hf_dir(other, model.state_dict(), model.config, tokenizer, "card")
    assert (other / "mine.txt").read_text() == "keep me"
    out = tmp_path / "hf"
    write_hf_dir(out, model.state_dict(), model.config, tokenizer, "first")
    write_hf_dir(out, model.state_dict(), model.config, tokenizer, "second")
    assert (out / "README.md").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes"]  # no temp folder left behind


def test_import_refuses_what_the_model_cannot_compute(exported, tmp_path):
    import shutil

    for field, value, named in (("hidden_act", "gelu", "hidden_act"), ("attention_bias", True, "attention_bias"),
                                ("intermediate_size", 1000, "intermediate_size")):
        broken = tmp_path / field
        shutil.copytree(exported, broken)
        cfg = json.loads((broken / "config.json").read_text())
        cfg[field] = value
        (broken / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(FormatError, match=named):
            read_hf_dir(broken)


def test_import_refuses_merges_that_would_tokenize_differently(exported, tmp_path):
    import shutil

    for name, edit in (("dropped", lambda m: m[:-1]), ("reordered", lambda m: m[::-1])):
        broken = tmp_path / name
        shutil.copytree(exported, broken)
        data = json.loads((broken / "tokenizer.json").read_text())
        data["model"]["merges"] = edit(data["model"]["merges"])
        (broken / "tokenizer.json").write_text(json.dumps(data))
        with pytest.raises(FormatError, match="merge"):
            read_hf_dir(broken)


# ---- the tokenizer


@pytest.mark.parametrize("name", ["english", "korean", "code", "emoji", "special"])
def test_exported_tokenizer_gives_the_same_ids(name, exported, hf_tokenizer, tokenizer):
    import tokenizers

    text = TEXTS[name]
    ours = tokenizer.encode(text)
    raw = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    # this project encodes special-token text as plain text (a user cannot inject control tokens);
    # transformers matches it as the control token unless told to split it, as with any HF chat model
    assert hf_tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) == ours
    if name != "special":
        assert hf_tokenizer.encode(text, add_special_tokens=False) == ours
        assert raw.encode(text, add_special_tokens=False).ids == ours
        assert hf_tokenizer.decode(ours) == text
    else:
        sp = tokenizer.encode_special
        expected = [sp("<|bos|>"), *tokenizer.encode("Hi"), sp("<|user_end|>"), *tokenizer.encode(" and "),
                    sp("<|assistant_start|>")]
        assert hf_tokenizer.encode(text, add_special_tokens=False) == expected


def test_exported_tokenizer_agrees_on_long_mixed_text(exported, tokenizer):
    import random

    import tokenizers

    rng = random.Random(0)
    alphabet = "abcxyz ABC 0123456789 \n\t\r.,;:'\"!?-_()[]{}<>|/\\ 가나다한국 こんにちは ñéß 🙂🚀👩‍👧 \u200b"
    texts = [(REPO_ROOT / "README.md").read_text(encoding="utf-8"),
             (REPO_ROOT / "nanochat" / "tokenizer.py").read_text(encoding="utf-8"),
             "".join(rng.choice(alphabet) for _ in range(5000))]
    raw = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    raw.encode_special_tokens = True  # README.md mentions <|bos|>: here it is text, as in our encode
    for text in texts:
        assert raw.encode(text, add_special_tokens=False).ids == tokenizer.encode(text)


def test_chat_template_renders_exactly_as_render_for_completion(hf_tokenizer, tokenizer):
    for conversation in CONVERSATIONS:
        messages = conversation["messages"]
        ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert ids["input_ids"] == tokenizer.render_for_completion(conversation)
        if messages[-1]["role"] == "assistant":
            full = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
            assert full["input_ids"] == tokenizer.render_conversation(conversation, max_tokens=None)[0]


# ---- the scripts


def _run(module, *args, base_dir):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=subprocess_env(NANOCHAT_BASE_DIR=str(base_dir)))


def test_cli_export_then_import_into_a_fresh_base_dir(tmp_path, monkeypatch, model, tokenizer):
    import dataclasses

    from nanochat.checkpoint import checkpoint_dir, load_model, save_checkpoint
    from nanochat.report import SECTION_CHAT_EVAL_SFT, log_section

    src = tmp_path / "src"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(src))
    tokenizer.save(src / "tokenizer")
    save_checkpoint(checkpoint_dir("sft", "d2"), 7, model_state=model.state_dict(), optimizer_states=None,
                    meta={"model_config": dataclasses.asdict(model.config)}, rng=False, rank=0, world_size=1)
    log_section(SECTION_CHAT_EVAL_SFT, {"ARC-Easy": 0.4321, "GSM8K": 0.0512})
    out = tmp_path / "exported"
    done = _run("scripts.export_hf", "--source=sft", f"--out_dir={out}", base_dir=src)
    assert done.returncode == 0, done.stderr
    card = (out / "README.md").read_text()
    assert "0.4321" in card and "sft checkpoint d2 step 7" in card

    dst = tmp_path / "dst"
    done = _run("scripts.import_checkpoint", str(out), "--phase=mid", "--model_tag=imported", base_dir=dst)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(dst))
    loaded, meta = load_model("mid", tag="imported")
    assert meta["imported_from"]["format"] == "transformers-nanochat" and meta["step"] == 0
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert Tokenizer.load(dst / "tokenizer").encode(TEXTS["korean"]) == tokenizer.encode(TEXTS["korean"])

    # a second import into the same tag, or over a different tokenizer, is refused before writing
    from scripts.import_checkpoint import Options, main

    with pytest.raises(ValueError, match="already holds checkpoints"):
        main(Options(from_dir=str(out), phase="mid", model_tag="imported"))
    Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, tokenizer.pattern).save(dst / "tokenizer")
    with pytest.raises(ValueError, match="different tokenizer"):
        main(Options(from_dir=str(out), model_tag="other"))
    assert not checkpoint_dir("sft", "other").exists()


def test_training_path_does_not_import_transformers():
    code = ("import sys, nanochat.hf_interop, nanochat.upstream_import, scripts.export_hf, "
            "scripts.import_checkpoint, scripts.base_train, scripts.chat_sft; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=subprocess_env())
    assert done.returncode == 0, done.stderr


def test_positional_from_becomes_from_dir():
    from scripts.import_checkpoint import split_positional

    assert split_positional(["a/b", "--phase=base"]) == ["--from_dir=a/b", "--phase=base"]
    assert split_positional(["--step", "5", "a/b"]) == ["--step", "5", "--from_dir=a/b"]
    assert split_positional(["--replace_tokenizer", "a/b"]) == ["--replace_tokenizer", "--from_dir=a/b"]
