"""Export a checkpoint as a Hugging Face `transformers` NanoChat folder (no custom code to load it).

    python -m scripts.export_hf --source=sft --out_dir=nanochat-d20-hf
    python -m scripts.export_hf --source=base --model_tag=d20 --step=21400 --out_dir=/tmp/d20-base-hf

The folder: config.json (NanoChatForCausalLM), model.safetensors, generation_config.json (stops at
<|assistant_end|> and <|bos|>), tokenizer.json + tokenizer_config.json (with the chat template), and a
model card README.md carrying the report card's summary when $NANOCHAT_BASE_DIR/report has one.
How the weights are converted: nanochat/hf_interop.py. Writing it needs no `transformers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanochat.common import print0, run_main
from nanochat.config import parse_args
from nanochat.phases import Phase


@dataclass
class Options:
    source: Phase = "sft"  # which phase's checkpoint to export
    model_tag: str | None = None  # checkpoint folder (None = the most recently saved)
    step: int | None = None  # checkpoint step (None = the latest)
    out_dir: str | None = None  # the folder to write (required); replaces an earlier export there

    def __post_init__(self):
        if not self.out_dir:
            raise ValueError("--out_dir is required: the folder to write the Hugging Face model into")


def model_card(config, source: str, tag: str, step: int, summary: list[str] | None) -> str:
    """README.md of the export: what it is, how to load it, and the report card's figures if any."""
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [nanochat]", "---", "",
        f"# nanochat d{config.n_layer} ({source})", "",
        f"A {config.n_layer}-layer nanochat model ({config.n_embd} wide, {config.n_head} heads, "
        f"{config.n_kv_head} key/value heads, vocabulary {config.vocab_size}, context {config.sequence_len}), "
        f"exported from the {source} checkpoint {tag} step {step}.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True,',
        '                                    return_tensors="pt", return_dict=True)',
        "out = model.generate(**ids, max_new_tokens=64, do_sample=False)",
        'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```", "",
    ]
    if summary:
        lines += ["## Report card", "", *summary, ""]
    return "\n".join(lines)


def report_summary() -> list[str] | None:
    """The report's BASE/MID/SFT/RL summary table, or None when no phase has logged a section."""
    from nanochat.report import read_sections, report_dir, summary_table

    sections, _ = read_sections(report_dir())
    if not sections:
        return None
    return summary_table({record["name"]: record for _, _, record in sections})


def main(opts: Options) -> None:
    import torch

    from nanochat.checkpoint import load_checkpoint
    from nanochat.common import get_base_dir
    from nanochat.gpt import GPTConfig
    from nanochat.hf_interop import write_hf_dir
    from nanochat.tokenizer import Tokenizer

    saved = load_checkpoint(opts.source, opts.step, tag=opts.model_tag, load_optimizer=False)
    config = GPTConfig(**saved.meta["model_config"])
    tokenizer = Tokenizer.load(get_base_dir() / "tokenizer")
    card = model_card(config, opts.source, saved.path.parent.name, saved.step, report_summary())
    with torch.no_grad():
        out = write_hf_dir(opts.out_dir, saved.model_state, config, tokenizer, card)
    print0(f"exported {saved.path} -> {out}")
    print0(f"load it with AutoModelForCausalLM.from_pretrained({str(Path(out))!r})")


if __name__ == "__main__":
    run_main(main, parse_args(Options, prog="python -m scripts.export_hf", description=__doc__), errors=(FileNotFoundError, ValueError, FileExistsError))
