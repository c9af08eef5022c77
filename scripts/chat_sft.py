"""Supervised finetuning: the midtrained model on a small, clean mixture of whole conversations.

    python -m scripts.chat_sft                                         # latest mid checkpoint, one epoch
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft       # on one 8-GPU node
    python -m scripts.chat_sft --source=base                           # skip midtraining
    python -m scripts.chat_sft --offline --num_iterations=50 --device_batch_size=4 \\
        --target_examples_per_step=8 --max_seq_len=256                 # tiny CPU run, no downloads
    python -m scripts.chat_sft --tasks=koalpaca,identity:4 --identity_name=... # a Korean SFT

The mixture (tasks/mixtures.py, --tasks): ARC-Easy/Challenge, GSM8K, ~10K SmolTalk conversations,
identity and spelling. Each batch holds whole conversations padded to the longest; padding and
non-assistant tokens are left out of the loss (the loop: nanochat/train_chat.py).
Checkpoints: $NANOCHAT_BASE_DIR/chatsft_checkpoints/<tag>/.
"""

from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args
from nanochat.train_chat import SFTOptions, padded_batching, train_chat
from tasks.mixtures import chat_mixture


def main(opts: SFTOptions) -> dict:
    train, val, spec = chat_mixture(opts, "sft")
    return train_chat(opts, train, val, padded_batching, task_names=spec)


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(SFTOptions, prog="python -m scripts.chat_sft", description=__doc__))
