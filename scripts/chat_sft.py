"""Supervised finetuning: the midtrained model on a small, clean mixture of whole conversations.

    python -m scripts.chat_sft                                         # latest mid checkpoint, one epoch
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft       # on one 8-GPU node
    python -m scripts.chat_sft --source=base                           # skip midtraining
    python -m scripts.chat_sft --offline --num_iterations=50 --device_batch_size=4 \\
        --target_examples_per_step=8 --max_seq_len=256                 # tiny CPU run, no downloads
    python -m scripts.chat_sft --tasks=koalpaca,identity:4 --identity_name=... # a Korean SFT

The mixture (tasks/mixtures.py, --tasks): ARC-Easy/Challenge, GSM8K, ~10K SmolTalk conversations,
identity and spelling. Each batch holds whole conversations padded to the longest; padding and
non-assistant tokens are left out of the loss. Checkpoints: $NANOCHAT_BASE_DIR/chatsft_checkpoints/<tag>/.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanochat.chat_train import ChatOptions, train_chat
from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args


@dataclass
class Options(ChatOptions):
    source: str = "mid"  # phase whose checkpoint to start from: mid | base
    device_batch_size: int = 4  # conversations per forward pass per device
    target_examples_per_step: int = 32  # conversations per optimizer step (gradient accumulation fills it)
    num_epochs: float = 1.0  # passes over the mixture (when --num_iterations is -1)
    num_iterations: int = -1  # optimizer steps (-1 = num_epochs x mixture / target_examples_per_step)
    init_lr_frac: float = 0.02  # multiplier on the base learning rates: SFT nudges, it does not retrain
    warmdown_ratio: float = 1.0  # linear decay over the whole run
    momentum_warmup: int = 0  # Muon momentum at 0.95 from the start
    eval_every: int = 100  # steps between validation losses (-1 = never, not even at the end)
    pad_multiple: int = 1  # round each batch's length up to this (fewer shapes for torch.compile; 1 = tight)

    def __post_init__(self):
        self.validate()
        if self.target_examples_per_step < 1 or self.num_epochs <= 0 or self.pad_multiple < 1:
            raise ValueError("--target_examples_per_step and --pad_multiple must be >= 1 and --num_epochs > 0")


def main(opts: Options) -> dict:
    return train_chat(opts, "sft")


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.chat_sft", description=__doc__))
