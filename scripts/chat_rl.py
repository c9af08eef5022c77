"""Reinforcement learning on GSM8K: the SFT model samples answers, and right ones are reinforced.

    python -m scripts.chat_rl                                          # latest SFT checkpoint, one epoch
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl        # on one 8-GPU node
    python -m scripts.chat_rl --offline --device_type=cpu --examples_per_step=2 --num_samples=4 \\
        --max_new_tokens=32 --num_iterations=10 --max_problems=8      # tiny CPU run, no downloads

The reference nanochat's simplified GRPO (the loop: nanochat/train_rl.py): on-policy REINFORCE with
the mean reward of each prompt's samples as baseline, no KL, no ratio clipping. GSM8K must be
fetched first (python -m tasks.sources --dataset=gsm8k); --offline uses generated arithmetic word
problems. Evaluation is greedy pass@1 on the eval split. Checkpoints:
$NANOCHAT_BASE_DIR/chatrl_checkpoints/<tag>/.
"""

from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args
from nanochat.train_rl import RLOptions, train_rl


def main(opts: RLOptions) -> dict:
    """GSM8K (train / test), or with --offline generated arithmetic problems; missing GSM8K fails at
    once with the command that fetches it."""
    from tasks.mixtures import build_task

    if opts.offline:  # the first thousand training problems: a run of a few hundred steps sees each often
        return train_rl(opts, build_task("arithmetic", "train")[:1000], build_task("arithmetic", "test"),
                        task_name="arithmetic")
    return train_rl(opts, build_task("gsm8k", "train"), build_task("gsm8k", "test"), task_name="GSM8K")


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(RLOptions, prog="python -m scripts.chat_rl", description=__doc__))
