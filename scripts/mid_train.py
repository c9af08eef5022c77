"""Midtraining: teach the base model the chat format, multiple choice, the calculator tool and its identity.

    python -m scripts.mid_train                                        # latest base checkpoint, one pass
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train      # on one 8-GPU node
    python -m scripts.mid_train --offline --num_iterations=100 --device_batch_size=8 --max_seq_len=256 \\
        --total_batch_size=-1                                          # tiny CPU run, no downloads
    python -m scripts.mid_train --resume=auto                          # continue after a crash

The mixture (tasks/mixtures.py, --tasks): SmolTalk, MMLU auxiliary_train, GSM8K, identity and
spelling; fetch the datasets first with `python -m tasks.sources --dataset=all`, or pass --offline.
Conversations are packed into (B, T) rows with the loss on the assistant's tokens only.
Checkpoints: $NANOCHAT_BASE_DIR/mid_checkpoints/<tag>/ (the base run's tag), metrics.jsonl beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanochat.chat_train import ChatOptions, train_chat
from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args


@dataclass
class Options(ChatOptions):
    source: str = "base"  # phase whose checkpoint to start from: base (or mid, to midtrain again)
    total_batch_size: int = 524288  # tokens per optimizer step (-1 = one forward pass on every device)
    num_iterations: int = -1  # optimizer steps (-1 = one pass over the mixture)

    def __post_init__(self):
        self.validate()
        if self.total_batch_size == 0 or self.total_batch_size < -1:
            raise ValueError(f"--total_batch_size must be positive or -1, got {self.total_batch_size}")


def main(opts: Options) -> dict:
    return train_chat(opts, "mid")


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.mid_train", description=__doc__))
