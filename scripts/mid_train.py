"""Midtraining: teach the base model the chat format, multiple choice, the calculator tool and its identity.

    python -m scripts.mid_train                                        # latest base checkpoint, one pass
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train      # on one 8-GPU node
    python -m scripts.mid_train --offline --num_iterations=100 --device_batch_size=8 --max_seq_len=256 \\
        --total_batch_size=none                                        # tiny CPU run, no downloads
    python -m scripts.mid_train --resume=auto                          # continue after a crash

The mixture (tasks/mixtures.py, --tasks): SmolTalk, MMLU auxiliary_train, GSM8K, identity and
spelling; fetch the datasets first with `python -m tasks.sources --dataset=all`, or pass --offline.
Conversations are packed into (B, T) rows with the loss on the assistant's tokens only (the loop:
nanochat/train_chat.py). Checkpoints: $NANOCHAT_BASE_DIR/mid_checkpoints/<tag>/ (the base run's
tag), metrics.jsonl beside them.
"""

from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args
from nanochat.train_chat import MidOptions, packed_batching, train_chat
from tasks.mixtures import chat_mixture


def main(opts: MidOptions) -> dict:
    train, val, spec = chat_mixture(opts, "mid")
    return train_chat(opts, train, val, packed_batching, task_names=spec)


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(MidOptions, prog="python -m scripts.mid_train", description=__doc__))
