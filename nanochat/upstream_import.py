"""Read upstream nanochat's checkpoints (karpathy/nanochat) without running any code from them.

    state, config, step, meta = read_upstream_checkpoint(ckpt_dir, step=None)   # model_NNNNNN.pt + meta
    tokenizer = read_upstream_tokenizer(tokenizer_dir)                         # tokenizer.pkl + token_bytes.pt

Upstream writes `model_<step:06d>.pt` (torch.save of the model's state_dict: transformer.wte,
transformer.h.<i>.attn.c_q/c_k/c_v/c_proj, transformer.h.<i>.mlp.c_fc/c_proj, lm_head, with
torch.compile's `_orig_mod.` prefix when the model was compiled) and `meta_<step:06d>.json`
(model_config: sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd), and in its tokenizer
folder `tokenizer.pkl` (a pickled tiktoken Encoding) and `token_bytes.pt`.

Safety: tensors are read with torch.load(weights_only=True). The pickle goes through an unpickler that
resolves exactly one global, tiktoken.core.Encoding, to a stand-in that only records its state dict
(tiktoken pickles an Encoding as NEWOBJ + BUILD of {name, pat_str, mergeable_ranks, special_tokens});
any other global (os.system, builtins.eval, ...) is refused before it could be called.

Upstream's model is this project's up to conventions: the same layers and shapes, rotary by -angle
(as transformers' NanoChat, see nanochat.hf_interop), QK norm after rotary, cap 15, rope base 10000.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path

import torch

from nanochat.gpt import GPTConfig
from nanochat.hf_interop import LAYER_NAMES, FormatError, from_hf_state
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

UPSTREAM_SOFTCAP = 15.0  # upstream's forward: softcap * tanh(logits / softcap), softcap = 15
UPSTREAM_ROPE_BASE = 10000.0
_MODEL_RE = re.compile(r"^model_(\d+)\.pt$")
_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
_TOP = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}


# ----------------------------------------------------------------------------------------------
# The pickled tokenizer


class _EncodingState:
    """Stands in for tiktoken.core.Encoding while unpickling: keeps the state, runs nothing."""

    def __setstate__(self, state) -> None:
        self.state = state


class _TiktokenUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(f"it references {module}.{name}, and only tiktoken.core.Encoding is allowed")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it uses persistent ids, which a tiktoken Encoding pickle never has")


def load_tiktoken_pickle(data: bytes) -> dict:
    """The state {name, pat_str, mergeable_ranks, special_tokens} of a pickled tiktoken Encoding.

    Raises FormatError (one line) for anything else, without calling any object the pickle names."""
    try:
        obj = _TiktokenUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError) as e:
        raise FormatError(f"refusing the tokenizer pickle: {e}") from None
    state = getattr(obj, "state", None) if isinstance(obj, _EncodingState) else None
    if not isinstance(state, dict):
        raise FormatError("refusing the tokenizer pickle: it is not a tiktoken Encoding with its ranks inside "
                          "(an Encoding pickled by registered name carries no vocabulary)")
    ranks, special, pattern = state.get("mergeable_ranks"), state.get("special_tokens"), state.get("pat_str")
    if not (isinstance(ranks, dict) and all(isinstance(k, bytes) and type(v) is int for k, v in ranks.items())):
        raise FormatError("refusing the tokenizer pickle: mergeable_ranks is not a dict of bytes -> int")
    if not (isinstance(special, dict) and all(isinstance(k, str) and type(v) is int for k, v in special.items())):
        raise FormatError("refusing the tokenizer pickle: special_tokens is not a dict of str -> int")
    if not isinstance(pattern, str):
        raise FormatError("refusing the tokenizer pickle: pat_str is not a string")
    return state


def read_upstream_tokenizer(tokenizer_dir: str | Path) -> Tokenizer:
    """This project's Tokenizer from upstream's tokenizer.pkl, checked against its token_bytes.pt."""
    tokenizer_dir = Path(tokenizer_dir)
    pkl = tokenizer_dir / "tokenizer.pkl"
    if not pkl.is_file():
        raise FileNotFoundError(f"no upstream tokenizer at {pkl}; pass --tokenizer_dir=<upstream base dir>/tokenizer")
    state = load_tiktoken_pickle(pkl.read_bytes())
    special = state["special_tokens"]
    if sorted(special) != sorted(SPECIAL_TOKENS):
        raise FormatError(f"{pkl}: special tokens {sorted(special)} are not nanochat's {SPECIAL_TOKENS}")
    names = sorted(special, key=special.__getitem__)
    try:
        tokenizer = Tokenizer.from_ranks(state["mergeable_ranks"], state["pat_str"], names)
    except ValueError as e:
        raise FormatError(f"{pkl}: {e}") from None
    if [tokenizer.special_tokens[n] for n in names] != [special[n] for n in names]:
        raise FormatError(f"{pkl}: special token ids do not follow the ranks without a gap")
    tb_path = tokenizer_dir / "token_bytes.pt"
    if tb_path.is_file():
        token_bytes = _load_tensors(tb_path)
        expected = torch.as_tensor(tokenizer.token_bytes_lengths(), dtype=torch.int64)
        if not isinstance(token_bytes, torch.Tensor) or not torch.equal(token_bytes.to(torch.int64), expected):
            raise FormatError(f"{tb_path} does not match the byte lengths of {pkl}'s tokens")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# The model


def _load_tensors(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"refusing {path}: it holds more than tensors (torch.load weights_only: {first})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise FormatError(f"{path} is not a readable torch file: {str(e).splitlines()[0] if str(e) else e}") from None


def upstream_steps(ckpt_dir: str | Path) -> list[int]:
    """Steps that have both model_<step>.pt and meta_<step>.json, ascending."""
    ckpt_dir = Path(ckpt_dir)
    found = []
    for p in ckpt_dir.iterdir() if ckpt_dir.is_dir() else []:
        m = _MODEL_RE.match(p.name)
        if m and (ckpt_dir / f"meta_{m.group(1)}.json").is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def upstream_config(model_config: dict, where: str) -> GPTConfig:
    """GPTConfig of upstream's meta model_config; FormatError naming options this model cannot express."""
    if not isinstance(model_config, dict):
        raise FormatError(f"{where} has no model_config object")
    extra = sorted(set(model_config) - set(_CONFIG_KEYS))
    if extra:
        raise FormatError(f"{where}: model_config has {extra}, options of a newer upstream model that this "
                          f"project's model cannot express")
    missing = [k for k in _CONFIG_KEYS if k not in model_config]
    if missing:
        raise FormatError(f"{where}: model_config lacks {missing}")
    try:
        return GPTConfig(**{k: model_config[k] for k in _CONFIG_KEYS}, softcap=UPSTREAM_SOFTCAP,
                         rope_base=UPSTREAM_ROPE_BASE)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None


def upstream_to_hf_names(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Upstream's keys (any `_orig_mod.` prefix removed) -> NanoChat's, which share its rotary convention.

    Upstream may pad the embedding and head to a multiple of 64 rows and slice the logits; rows beyond
    vocab_size are never produced nor read, so they are dropped."""
    names = dict(_TOP)
    for i in range(config.n_layer):
        names.update({f"transformer.h.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in LAYER_NAMES.items()})
    plain = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    extra = sorted(set(plain) - set(names))
    missing = sorted(set(names) - set(plain))
    if extra or missing:
        raise FormatError(f"the upstream weights are not the model its meta describes: unexpected {extra[:4]}, "
                          f"missing {missing[:4]}")
    out = {}
    for src, dst in names.items():
        tensor = plain[src]
        if src in _TOP and tensor.size(0) > config.vocab_size:
            tensor = tensor[: config.vocab_size]
        out[dst] = tensor.float().contiguous()  # upstream keeps the embedding in bf16 on CUDA
    return out


def read_upstream_checkpoint(ckpt_dir: str | Path, step: int | None = None
                             ) -> tuple[dict[str, torch.Tensor], GPTConfig, int, dict]:
    """(this project's fp32 state_dict, GPTConfig, step, upstream meta) of model_<step>.pt (None = latest)."""
    ckpt_dir = Path(ckpt_dir)
    steps = upstream_steps(ckpt_dir)
    if not steps:
        raise FileNotFoundError(f"no upstream checkpoint (model_NNNNNN.pt + meta_NNNNNN.json) in {ckpt_dir}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"no step {step} in {ckpt_dir}; available steps: {', '.join(map(str, steps))}")
    meta_path = ckpt_dir / f"meta_{step:06d}.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{meta_path} does not parse as JSON: {e}") from None
    config = upstream_config(meta.get("model_config") if isinstance(meta, dict) else None, str(meta_path))
    state = _load_tensors(ckpt_dir / f"model_{step:06d}.pt")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FormatError(f"{ckpt_dir / f'model_{step:06d}.pt'} is not a state_dict of tensors")
    return from_hf_state(upstream_to_hf_names(state, config), config), config, step, meta
