"""Bring a model from outside into this project's checkpoint layout (chat_cli, chat_web, evals, training).

    python -m scripts.import_checkpoint path/to/nanochat-d32-hf                   # a NanoChatForCausalLM folder
    python -m scripts.import_checkpoint ~/upstream/chatsft_checkpoints/d20 --phase=sft --model_tag=d20
    python -m scripts.import_checkpoint --from_dir=path/to/folder --phase=base --step=21400

FROM (the one bare argument, or --from_dir) is either a Hugging Face folder (config.json of model_type
nanochat, model*.safetensors, tokenizer.json) or an upstream karpathy/nanochat checkpoint folder
(model_NNNNNN.pt + meta_NNNNNN.json; its tokenizer.pkl + token_bytes.pt come from --tokenizer_dir,
by default FROM/tokenizer or upstream's FROM/../../tokenizer). Upstream's pickles are read without running
code (nanochat/upstream_import.py). The model is written as step N of <phase dir>/<model_tag> and the
tokenizer to $NANOCHAT_BASE_DIR/tokenizer, which must be absent or the same tokenizer.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import print0, run_main
from nanochat.config import parse_args
from nanochat.phases import Phase


@dataclass
class Options:
    from_dir: str | None = None  # the folder to import (or give it as the one bare argument)
    phase: Phase = "sft"  # the phase to file the model under
    model_tag: str | None = None  # checkpoint folder to create (None = the upstream folder's name, or d<layers>)
    step: int | None = None  # upstream: the step to import (None = latest); a Hugging Face folder is filed as this step (None = 0)
    tokenizer_dir: str | None = None  # upstream tokenizer folder (None = FROM/tokenizer, else FROM/../../tokenizer)
    replace_tokenizer: bool = False  # overwrite a different tokenizer in $NANOCHAT_BASE_DIR (its other models then mis-tokenize)

    def __post_init__(self):
        if not self.from_dir:
            raise ValueError("what to import is missing: python -m scripts.import_checkpoint FROM (or --from_dir=FROM)")
        if self.step is not None and self.step < 0:
            raise ValueError(f"--step must be >= 0, got {self.step}")


def split_positional(argv: list[str]) -> list[str]:
    """config.py reads options only: turn the one bare argument FROM into --from_dir=FROM.

    A bare word right after a `--key` without `=` (not a boolean flag) is that option's value."""
    flags = {f"--{f.name}" for f in dataclasses.fields(Options) if f.type in (bool, "bool")}
    out, bare = [], []
    for i, arg in enumerate(argv):
        prev = argv[i - 1] if i else ""
        is_value = prev.startswith("--") and "=" not in prev and prev not in flags
        if arg.startswith("-") or is_value:
            out.append(arg)
        else:
            bare.append(arg)
            out.append(f"--from_dir={arg}")
    if len(bare) > 1:
        print(f"error: one folder to import, got {len(bare)}: {' '.join(bare)}", file=sys.stderr)
        sys.exit(2)
    return out


def same_tokenizer(a, b) -> bool:
    return (a.pattern == b.pattern and a.special_tokens == b.special_tokens and a.n_vocab == b.n_vocab
            and all(a.id_to_token_bytes(i) == b.id_to_token_bytes(i) for i in range(a.n_vocab)))


def read_source(opts: Options):
    """(state_dict, GPTConfig, Tokenizer, step, default tag, provenance) of FROM, whichever format it is."""
    from nanochat.hf_interop import read_hf_dir
    from nanochat.upstream_import import read_upstream_checkpoint, read_upstream_tokenizer, upstream_steps

    src = Path(opts.from_dir).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    if (src / "config.json").is_file():
        state, config, tokenizer = read_hf_dir(src)
        step = 0 if opts.step is None else opts.step
        return state, config, tokenizer, step, f"d{config.n_layer}", {"format": "transformers-nanochat"}
    if upstream_steps(src):
        state, config, step, meta = read_upstream_checkpoint(src, opts.step)
        tok_dir = Path(opts.tokenizer_dir).expanduser() if opts.tokenizer_dir else None
        if tok_dir is None:
            tok_dir = src / "tokenizer" if (src / "tokenizer" / "tokenizer.pkl").is_file() else src.parent.parent / "tokenizer"
        tokenizer = read_upstream_tokenizer(tok_dir)
        if tokenizer.n_vocab != config.vocab_size:
            raise ValueError(f"the model's vocabulary ({config.vocab_size}) is not {tok_dir}'s tokenizer's "
                             f"({tokenizer.n_vocab}): pass the tokenizer it was trained with (--tokenizer_dir)")
        provenance = {"format": "upstream-nanochat", "step": step, "tokenizer_dir": str(tok_dir.resolve())}
        for key in ("val_bpb",):
            if isinstance(meta.get(key), (int, float)):
                provenance[key] = meta[key]
        return state, config, tokenizer, step, src.resolve().name, provenance
    raise ValueError(f"{src} is neither a Hugging Face NanoChat folder (config.json) nor an upstream "
                     f"nanochat checkpoint folder (model_NNNNNN.pt + meta_NNNNNN.json)")


def check_loads(state, config) -> None:
    """Load the weights into this project's GPT once, so a shape mismatch stops the import before it writes."""
    import torch

    from nanochat.gpt import GPT

    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the weights do not fit the model their config describes: {' '.join(str(e).split())[:300]}") from None


def main(opts: Options) -> None:
    from nanochat.checkpoint import checkpoint_dir, list_checkpoints, save_checkpoint
    from nanochat.common import get_base_dir
    from nanochat.tokenizer import Tokenizer

    state, config, tokenizer, step, default_tag, provenance = read_source(opts)
    check_loads(state, config)
    ckpt_dir = checkpoint_dir(opts.phase, opts.model_tag or default_tag)
    if list_checkpoints(ckpt_dir):
        raise ValueError(f"{ckpt_dir} already holds checkpoints; choose another --model_tag")
    tok_dir = get_base_dir() / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file() and not opts.replace_tokenizer:
        try:
            existing = Tokenizer.load(tok_dir)
        except ValueError:
            existing = None
        if existing is None or not same_tokenizer(existing, tokenizer):
            raise ValueError(f"{tok_dir} holds a different tokenizer, which the models trained here use; import into "
                             f"another NANOCHAT_BASE_DIR, or pass --replace_tokenizer")
    tokenizer.save(tok_dir)
    provenance["source"] = str(Path(opts.from_dir).expanduser().resolve())
    meta = {"model_config": dataclasses.asdict(config), "phase": opts.phase, "imported_from": provenance}
    path = save_checkpoint(ckpt_dir, step, model_state=state, optimizer_states=None, meta=meta, rng=False,
                           rank=0, world_size=1)
    print0(f"imported {opts.from_dir} -> {path} (tokenizer: {tok_dir})")
    print0(f"chat with it: python -m scripts.chat_cli --source={opts.phase} --model_tag={ckpt_dir.name}")


if __name__ == "__main__":
    argv = split_positional(sys.argv[1:])
    run_main(main, parse_args(Options, argv, prog="python -m scripts.import_checkpoint FROM", description=__doc__))
