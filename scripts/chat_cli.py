"""Chat with a trained model in the terminal.

    python -m scripts.chat_cli -p "Why is the sky blue?"     # answer once and exit
    python -m scripts.chat_cli                               # interactive; 'clear' starts over, 'quit' exits
    python -m scripts.chat_cli --source=base --temperature=0 --max_new_tokens=64
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass
from typing import Literal

from nanochat.common import print0, run_main, setup_logging
from nanochat.config import parse_args
from nanochat.phases import Phase


@dataclass
class Options:
    prompt: str | None = None  # answer this once and exit (alias -p); None = interactive chat
    source: Phase = "sft"  # which phase's checkpoint
    model_tag: str | None = None  # checkpoint folder (None = the most recently saved)
    step: int | None = None  # checkpoint step (None = latest)
    temperature: float = 0.6  # 0 = greedy
    top_k: int | None = 50  # sample among the k most likely tokens (None = all)
    max_new_tokens: int = 512  # longest answer in tokens
    device_type: Literal["cuda", "mps", "cpu"] | None = None  # where the model runs (None = autodetect)
    seed: int = 42  # sampling seed

    def __post_init__(self):
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"--temperature must be within [0, 2], got {self.temperature}")
        if (self.top_k is not None and self.top_k < 1) or self.max_new_tokens < 1:
            raise ValueError(f"--top_k must be >= 1 (or none for all) and --max_new_tokens >= 1, "
                             f"got {self.top_k}, {self.max_new_tokens}")


def answer(engine, conversation: dict, opts: Options, out=sys.stdout) -> str:
    """Stream the assistant's reply to `out` and return it; the reply is also appended to the conversation."""
    tokenizer = engine.tokenizer
    ids = tokenizer.render_for_completion(conversation)
    stops = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id}
    # a character split across tokens is held back until its last byte arrives
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    generated = []
    for column, _masks in engine.generate(ids, num_samples=1, max_tokens=opts.max_new_tokens,
                                          temperature=opts.temperature, top_k=opts.top_k, seed=opts.seed):
        token = column[0]
        if token in stops:
            break
        generated.append(token)
        out.write(decoder.decode(tokenizer.id_to_token_bytes(token)))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    # back into the conversation as parts, so a tool call renders as a tool call next turn
    parts = tokenizer.parse_assistant(generated)
    if len(parts) == 1 and parts[0]["type"] == "text":
        content = parts[0]["text"]
    else:
        content = parts or "..."  # an empty reply still has to be a valid turn
    conversation["messages"].append({"role": "assistant", "content": content})
    reply = "".join(p["text"] for p in parts)
    return reply


def main(opts: Options) -> None:
    from nanochat.common import resolve_device_type
    from nanochat.engine import load_engine

    engine = load_engine(opts.source, model_tag=opts.model_tag, step=opts.step,
                         device=resolve_device_type(opts.device_type or ""))
    conversation: dict = {"messages": []}
    if opts.prompt:
        conversation["messages"].append({"role": "user", "content": opts.prompt})
        answer(engine, conversation, opts)
        return
    print0("nanochat: type a message; 'clear' starts a new conversation, 'quit' (or Ctrl-D) exits")
    while True:
        try:
            text = input("\nYou: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text.lower() in ("quit", "exit"):
            return
        if text.lower() == "clear":
            conversation = {"messages": []}
            print("(conversation cleared)")
            continue
        if not text:
            continue
        conversation["messages"].append({"role": "user", "content": text})
        sys.stdout.write("Assistant: ")
        answer(engine, conversation, opts)


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.chat_cli", description=__doc__, aliases={"-p": "prompt"}))
