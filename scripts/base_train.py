"""Pretrain the base model on parquet text shards (the loop: nanochat/train_base.py).

    python -m scripts.base_train --depth=4 --max_seq_len=256 --device_batch_size=4 --total_batch_size=none \\
        --num_iterations=200 --corpus=embedded                                  # tiny CPU run
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train --depth=20   # d20 on one 8-GPU node
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        -m scripts.base_train --depth=26                                       # several nodes
    python -m scripts.base_train --depth=20 --resume=auto                       # continue after a crash

Checkpoints: $NANOCHAT_BASE_DIR/base_checkpoints/<model_tag>/step_NNNNNN/ (see nanochat/checkpoint.py),
with metrics.jsonl beside them. Resume is exact: model, optimizers, schedule position, the data
loader's position and RNG states are restored, so the loss curve continues as if never stopped.
"""

from nanochat.common import run_main, setup_logging
from nanochat.config import parse_args
from nanochat.train_base import BaseOptions, train_base

if __name__ == "__main__":
    setup_logging()
    run_main(train_base, parse_args(BaseOptions, prog="python -m scripts.base_train", description=__doc__))
