"""The Hugging Face `transformers` NanoChat format: this project's model and tokenizer to and from it.

    write_hf_dir(out_dir, model_state, config, tokenizer, card="...")  # export (no transformers needed)
    state, config, tokenizer = read_hf_dir(path)                       # import a NanoChatForCausalLM folder

The folder holds config.json (NanoChatForCausalLM), model.safetensors, generation_config.json,
tokenizer.json (the `tokenizers` byte-level BPE), tokenizer_config.json (with the chat template) and
README.md. transformers loads it with AutoModelForCausalLM / AutoTokenizer and no custom code.

Both architectures compute the same function; three conventions differ, and the weights absorb them:
- Rotary direction. This project rotates each pair (x[i], x[i + D/2]) by +angle
  (x1 cos - x2 sin, x1 sin + x2 cos); NanoChat's rotate_half rotates it by -angle (as upstream
  nanochat does). Negating the second half of every query and key head (rows D/2..D-1 of each head in
  q_proj and k_proj) makes NanoChat's output equal ours with the second half negated, for q and k
  alike, so every q.k dot product, hence attention, is unchanged. The map is its own inverse.
- QK norm before rotary here, after it there: a rotation keeps a head vector's RMS, so the two
  orders agree; rms_norm_eps is set to torch's default for F.rms_norm (fp32 machine epsilon).
- Soft-cap: we divide the head's input by the cap, NanoChat divides its logits; the head is linear,
  so both are cap * tanh(logits / cap) (final_logit_softcapping; null when the cap is 0).
The rest matches one to one: RMSNorm without weights after the embedding, before each attention and
MLP, and before the head; ReLU^2 MLP of width 4C ("relu2"); no biases; untied head; GQA.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from nanochat import atomic_dir
from nanochat.gpt import GPTConfig
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

# F.rms_norm(x, shape) with eps=None uses torch.finfo(x.dtype).eps; the models run in fp32 here.
RMS_EPS = torch.finfo(torch.float32).eps
STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")  # where a reply ends (engine, chat_cli, chat_web)

# Parameter names: ours (per layer {i}) -> NanoChatForCausalLM's.
_TOP = {"wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
LAYER_NAMES = {  # the same inside upstream's blocks (upstream_import.py)
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_proj.weight": "mlp.fc2.weight",
}

# The chat template: render_for_completion (add_generation_prompt=True) and render_conversation
# (False) of nanochat.tokenizer, token for token. A system message is folded into the first user
# message with a blank line; assistant content is a str or a list of text/python/python_output parts.
# With add_generation_prompt, a final assistant message (a reference answer) is dropped, as there.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- set msgs = messages -%}"
    "{%- if add_generation_prompt and messages and messages[-1]['role'] == 'assistant' -%}"
    "{%- set msgs = messages[:-1] -%}{%- endif -%}"
    "<|bos|>"
    "{%- for m in msgs -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\\n\\n' -%}"
    "{%- elif m['role'] == 'user' -%}<|user_start|>{{ ns.system }}{{ m['content'] }}<|user_end|>"
    "{%- set ns.system = '' -%}"
    "{%- else -%}<|assistant_start|>"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'python' -%}<|python_start|>{{ p['text'] }}<|python_end|>"
    "{%- elif p['type'] == 'python_output' -%}<|output_start|>{{ p['text'] }}<|output_end|>"
    "{%- else -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|assistant_end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}"
)


class FormatError(ValueError):
    """A folder or file that is not what it claims to be; the message is one line for the user."""


# ----------------------------------------------------------------------------------------------
# Weights


def _flip_rotary_halves(weight: torch.Tensor, config: GPTConfig, n_heads: int) -> torch.Tensor:
    """Negate rows D/2..D-1 of every head of a (n_heads * D, C) q or k projection (see the docstring)."""
    if tuple(weight.shape) != (n_heads * config.head_dim, config.n_embd):
        raise FormatError(f"a q/k projection has shape {tuple(weight.shape)}, the config implies "
                          f"{(n_heads * config.head_dim, config.n_embd)}")
    out = weight.clone(memory_format=torch.contiguous_format)
    view = out.view(n_heads, 2, config.head_dim // 2, config.n_embd)  # (heads, 2 halves, D/2, C)
    view[:, 1].neg_()
    return out


def to_hf_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """This project's state_dict -> NanoChatForCausalLM's, same dtypes, rotary convention converted."""
    return _rename(state, config, forward=True)


def from_hf_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """NanoChatForCausalLM's state_dict -> this project's (the inverse of to_hf_state)."""
    return _rename(state, config, forward=False)


def _key_map(config: GPTConfig) -> dict[str, str]:
    names = dict(_TOP)
    for i in range(config.n_layer):
        names.update({f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in LAYER_NAMES.items()})
    return names


def _rename(state: dict[str, torch.Tensor], config: GPTConfig, *, forward: bool) -> dict[str, torch.Tensor]:
    names = _key_map(config)
    if not forward:
        names = {theirs: ours for ours, theirs in names.items()}
    missing = sorted(set(names) - set(state))
    extra = sorted(set(state) - set(names))
    if missing or extra:
        raise FormatError(f"the weights do not fit the config: missing {missing[:4]}, unexpected {extra[:4]}")
    out = {}
    for src, dst in names.items():
        tensor = state[src]
        for proj, heads in (("q", config.n_head), ("k", config.n_kv_head)):
            if src.endswith((f"attn.c_{proj}.weight", f"self_attn.{proj}_proj.weight")):
                tensor = _flip_rotary_halves(tensor, config, heads)
        out[dst] = tensor.contiguous()
    return out


# ----------------------------------------------------------------------------------------------
# Config


def hf_config(config: GPTConfig, tokenizer: Tokenizer, dtype: torch.dtype) -> dict:
    """config.json of NanoChatForCausalLM for this model: every shape and option of GPTConfig."""
    bos, end = tokenizer.bos_token_id, tokenizer.encode_special("<|assistant_end|>")
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": "nanochat",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "max_position_embeddings": config.sequence_len,
        "hidden_act": "relu2",
        "rms_norm_eps": RMS_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "final_logit_softcapping": float(config.softcap) if config.softcap else None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": [end, bos],
        # no pad id in the model: NanoChat makes it the embedding's padding_idx, whose row then gets no
        # gradient, which would freeze that token's embedding in fine-tuning (generation pads via
        # generation_config.json, the tokenizer via its pad_token)
        "pad_token_id": None,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def config_from_hf(cfg: dict) -> GPTConfig:
    """GPTConfig of a NanoChat config.json; FormatError naming the option this model cannot express."""
    if cfg.get("model_type") != "nanochat":
        raise FormatError(f"config.json has model_type {cfg.get('model_type')!r}, expected 'nanochat'")
    try:
        width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        rope = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}
        checks = {
            "hidden_act": (cfg.get("hidden_act", "relu2"), "relu2"),
            "intermediate_size": (cfg.get("intermediate_size"), 4 * width),
            "attention_bias": (bool(cfg.get("attention_bias", False)), False),
            "head_dim": (cfg.get("head_dim") or width // heads, width // heads),
            "rope_parameters.rope_type": (rope.get("rope_type", "default"), "default"),
        }
        for name, (got, expected) in checks.items():
            if got != expected:
                raise FormatError(f"config.json sets {name}={got!r}; this project's model supports only "
                                  f"{expected!r}, so it cannot compute the same function")
        eps = float(cfg.get("rms_norm_eps", RMS_EPS))
        if eps > 1e-5:
            raise FormatError(f"config.json sets rms_norm_eps={eps}; this project's RMSNorm uses {RMS_EPS:.3g}, "
                              f"too far from it to compute the same function")
        cap = cfg.get("final_logit_softcapping")
        return GPTConfig(sequence_len=int(cfg.get("max_position_embeddings", 2048)), vocab_size=int(cfg["vocab_size"]),
                         n_layer=int(cfg["num_hidden_layers"]), n_embd=width, n_head=heads, n_kv_head=kv_heads,
                         softcap=float(cap) if cap else 0.0, rope_base=float(rope["rope_theta"]))
    except (KeyError, TypeError) as e:
        raise FormatError(f"config.json lacks or mistypes a field NanoChat needs: {e}") from None


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in:
    printable Latin-1 bytes map to themselves, the other 68 to U+0100 upwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_B2U = _byte_to_unicode()
_U2B = {c: b for b, c in _B2U.items()}


def _to_unicode(token: bytes) -> str:
    return "".join(_B2U[b] for b in token)


def _to_bytes(text: str) -> bytes:
    try:
        return bytes(_U2B[c] for c in text)
    except KeyError as e:
        raise FormatError(f"vocabulary entry {text!r} is not byte-level BPE (character {e} has no byte)") from None


def merges_from_ranks(id_bytes: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list that reproduces tiktoken's encoding of these ranks.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank, whatever
    pair made that token in training. So every split (a, b) of every token with both halves in the
    vocabulary is a merge, ordered by the rank of a + b (then of a, then of b): the BPE model then
    picks the same pair at each step. This is also the list transformers' TikTokenConverter builds.
    """
    ranks = {token: rank for rank, token in enumerate(id_bytes)}
    merges = []
    for rank, token in enumerate(id_bytes):
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def hf_tokenizer_json(tokenizer: Tokenizer) -> dict:
    """tokenizer.json (the `tokenizers` library's format) encoding exactly as `tokenizer` does:
    Split by the project's regex, byte-level mapping without its own regex, BPE with tiktoken's ids."""
    specials = tokenizer.special_tokens
    n_ranks = tokenizer.n_vocab - len(specials)
    id_bytes = [tokenizer.id_to_token_bytes(i) for i in range(n_ranks)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for name, i in sorted(specials.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": True,  # a pre-token that is itself in the vocabulary is one id, as in tiktoken
            "vocab": {_to_unicode(b): i for i, b in enumerate(id_bytes)},
            "merges": [[_to_unicode(a), _to_unicode(b)] for a, b in merges_from_ranks(id_bytes)],
        },
    }


def hf_tokenizer_config(tokenizer: Tokenizer, max_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|assistant_end|>",
        "pad_token": "<|assistant_end|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        "model_max_length": max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def tokenizer_from_hf_json(data: dict) -> Tokenizer:
    """This project's Tokenizer from a tokenizer.json that hf_tokenizer_json (or an equivalent) wrote."""
    try:
        model = data["model"]
        if model.get("type") != "BPE":
            raise FormatError(f"tokenizer.json has a {model.get('type')} model, not byte-level BPE")
        pre = data.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        splits = [s for s in steps if s.get("type") == "Split"]
        if len(splits) != 1 or "Regex" not in splits[0].get("pattern", {}) or splits[0].get("invert"):
            raise FormatError("tokenizer.json's pre-tokenizer has no single regex Split, which this project needs")
        if [s.get("type") for s in steps] != ["Split", "ByteLevel"] or steps[1].get("use_regex"):
            raise FormatError("tokenizer.json's pre-tokenizer is not Split(regex) + ByteLevel(use_regex=false)")
        if data.get("normalizer"):
            raise FormatError("tokenizer.json has a normalizer, which this project's tokenizer does not apply")
        ranks = {_to_bytes(text): int(i) for text, i in model["vocab"].items()}
        specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    except (KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"tokenizer.json is not the expected byte-level BPE: missing or wrong {e}") from None
    if sorted(specials) != sorted(SPECIAL_TOKENS):
        raise FormatError(f"tokenizer.json's special tokens {sorted(specials)} are not this project's {SPECIAL_TOKENS}")
    names = sorted(specials, key=specials.__getitem__)
    if [specials[n] for n in names] != list(range(len(ranks), len(ranks) + len(names))):
        raise FormatError("tokenizer.json's special tokens do not follow the vocabulary's ids without a gap")
    tokenizer = Tokenizer.from_ranks(ranks, splits[0]["pattern"]["Regex"], names)
    _check_merges(model.get("merges", []), ranks)
    return tokenizer


def _check_merges(merges: list, ranks: dict[bytes, int]) -> None:
    """Refuse merges that would encode differently from tiktoken on these ranks: this project
    encodes by rank, so the file's merges must be exactly every split, in the order of their results."""
    id_bytes = sorted(ranks, key=ranks.__getitem__)
    expected = {(_to_unicode(a), _to_unicode(b)) for a, b in merges_from_ranks(id_bytes)}
    got, last = set(), -1
    for m in merges:
        pair = tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
        if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise FormatError(f"tokenizer.json has a malformed merge {m!r}")
        rank = ranks.get(_to_bytes(pair[0] + pair[1]))
        if rank is None:
            raise FormatError(f"tokenizer.json's merge {m!r} makes a token that is not in its vocabulary")
        if rank < last:
            raise FormatError(f"tokenizer.json's merge {m!r} is out of rank order: its merges are not the ones its "
                              "vocabulary's ranks imply, and this project (which encodes by rank) would "
                              "tokenize some text differently")
        last = rank
        got.add(pair)
    if got != expected:
        raise FormatError(f"tokenizer.json's merges are not the ones its vocabulary's ranks imply ({len(got)} "
                          f"merges, {len(expected)} expected): this project encodes by rank and would "
                          "tokenize some text differently")


# ----------------------------------------------------------------------------------------------
# The folder


def write_hf_dir(out_dir: str | os.PathLike, model_state: dict[str, torch.Tensor], config: GPTConfig,
                 tokenizer: Tokenizer, card: str) -> Path:
    """Write the folder under a temporary name beside out_dir and rename it: complete or absent.

    An existing out_dir is replaced only if it is such a folder (config.json of model_type nanochat)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not _is_hf_nanochat(out):
        raise FileExistsError(f"{out} exists and is not an exported NanoChat folder; choose an empty --out_dir")
    if tokenizer.n_vocab != config.vocab_size:
        raise FormatError(f"the model's vocabulary ({config.vocab_size}) is not the tokenizer's "
                          f"({tokenizer.n_vocab}): was the tokenizer retrained after this model?")
    dtypes = {t.dtype for t in model_state.values()}
    if len(dtypes) != 1:
        raise FormatError(f"the checkpoint mixes dtypes {sorted(map(str, dtypes))}; NanoChat loads one dtype")
    end_id = tokenizer.encode_special("<|assistant_end|>")
    files = {
        "config.json": hf_config(config, tokenizer, dtypes.pop()),
        "generation_config.json": {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": end_id,
                                   "eos_token_id": [tokenizer.encode_special(t) for t in STOP_TOKENS]},
        "tokenizer.json": hf_tokenizer_json(tokenizer),
        "tokenizer_config.json": hf_tokenizer_config(tokenizer, config.sequence_len),
        "special_tokens_map.json": {"bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
                                    "pad_token": "<|assistant_end|>"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = atomic_dir.temp_path(out)
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        save_file(to_hf_state(dict(model_state), config), str(temp / "model.safetensors"), metadata={"format": "pt"})
        for name, data in files.items():
            atomic_dir.write_bytes(temp / name, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())
        atomic_dir.write_bytes(temp / "README.md", card.encode())
        if out.exists():  # an earlier export (checked above): it goes only once the new one is whole
            atomic_dir.remove(out)
        atomic_dir.install(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out


def _is_hf_nanochat(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "nanochat"
    except (OSError, ValueError, AttributeError):
        return False


def read_hf_dir(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], GPTConfig, Tokenizer]:
    """(this project's state_dict, GPTConfig, Tokenizer) of a NanoChatForCausalLM folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        tok_data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FormatError(f"{path} is not a NanoChat folder: {Path(e.filename).name} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: a JSON file does not parse: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(tok_data, dict):
        raise FormatError(f"{path}: config.json and tokenizer.json must hold JSON objects")
    config = config_from_hf(cfg)
    weights = sorted(path.glob("model*.safetensors"))
    if not weights:
        raise FormatError(f"{path} has no model*.safetensors (only safetensors weights are read, never pickles)")
    state: dict[str, torch.Tensor] = {}
    try:
        for file in weights:
            state.update(load_file(str(file)))
    except (SafetensorError, OSError) as e:
        raise FormatError(f"{path}: the safetensors weights do not load: {e}") from None
    if cfg.get("tie_word_embeddings") and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # a tied head is an untied copy
    tokenizer = tokenizer_from_hf_json(tok_data)
    if tokenizer.n_vocab != config.vocab_size:
        raise FormatError(f"config.json's vocab_size {config.vocab_size} is not the tokenizer's {tokenizer.n_vocab}")
    return from_hf_state(state, config), config, tokenizer
