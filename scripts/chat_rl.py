"""Reinforcement learning on GSM8K: the SFT model samples answers, and right ones are reinforced.

    python -m scripts.chat_rl                                          # latest SFT checkpoint, one epoch
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl        # on one 8-GPU node
    python -m scripts.chat_rl --offline --device_type=cpu --examples_per_step=2 --num_samples=4 \\
        --max_new_tokens=32 --num_iterations=10 --eval_examples=8     # tiny CPU run, no downloads

The reference nanochat's simplified GRPO (nanochat/chat_rl.py): on-policy REINFORCE with the mean
reward of each prompt's samples as baseline, no KL, no ratio clipping. GSM8K must be fetched first
(python -m tasks.sources --dataset=gsm8k); --offline uses generated arithmetic word problems.
Evaluation is greedy pass@1 on the eval split. Checkpoints: $NANOCHAT_BASE_DIR/chatrl_checkpoints/<tag>/.
"""

from __future__ import annotations

from nanochat.chat_rl import RLOptions, train_rl
from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args


def main(opts: RLOptions) -> dict:
    return train_rl(opts)


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(RLOptions, prog="python -m scripts.chat_rl", description=__doc__))
