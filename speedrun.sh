#!/usr/bin/env bash
# The whole pipeline from nothing: environment, data, tokenizer, base model, its evaluation.
#   bash speedrun.sh                      # picks a configuration for this machine
#   NANOCHAT_OFFLINE=1 bash speedrun.sh   # force the embedded offline corpus
# On a GPU node: d20 on every visible GPU through torchrun, FineWeb-Edu shards when the network
# allows. Without a GPU: a CPU-sized run (depth 4, seq 256, vocab 4096, ~5 minutes of training on
# 2 cores) on the embedded corpus. Every artifact goes to $NANOCHAT_BASE_DIR (~/.cache/nanochat).
# Chat training, evaluation and the report are added here as they land.
set -euo pipefail
cd "$(dirname "$0")"
source dev/setup_env.sh
PY=.venv/bin/python
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
stage() { echo; echo "== $* ($(date +%H:%M:%S)) =="; }

NGPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
  NGPU=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
fi
ONLINE=0
if [ "${NANOCHAT_OFFLINE:-0}" != 1 ] && "$PY" - <<'EOF' 2>/dev/null; then ONLINE=1; fi
import urllib.request
urllib.request.urlopen("https://huggingface.co", timeout=5)
EOF

if [ "$NGPU" -gt 0 ]; then
  DEPTH="${DEPTH:-20}"; VOCAB_SIZE="${VOCAB_SIZE:-65536}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one process per GPU: CPU threads would only contend
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU")
  TRAIN_ARGS=(--depth="$DEPTH" --run="${WANDB_RUN:-dummy}" --save_every=1000)
  LOSS_ARGS=()
  echo "GPU run: $NGPU GPU(s), depth $DEPTH"
else
  VOCAB_SIZE="${VOCAB_SIZE:-4096}"
  LAUNCH=("$PY")
  # ~2k tokens per step at ~1 step/s on 2 cores: 300 steps is ~5 minutes and clearly lowers bpb
  TRAIN_ARGS=(--depth=4 --max_seq_len=256 --device_batch_size=8 --total_batch_size=-1 --num_iterations=300
              --eval_every=100 --eval_tokens=65536 --sample_every=300 --save_every=100 --warmdown_ratio=0.3)
  LOSS_ARGS=(--device_batch_size=8 --split_tokens=65536)
  echo "CPU run: no GPU found; a small configuration that finishes in minutes"
fi

stage "data"
if [ "$ONLINE" = 1 ]; then
  SOURCE=fineweb-edu
  # 8 shards (~2B chars) for the tokenizer now; d20 needs ~240, fetched while the tokenizer trains
  "$PY" -m nanochat.dataset -n 8
  if [ "$NGPU" -gt 0 ]; then "$PY" -m nanochat.dataset -n "${NUM_SHARDS:-240}" > "$NANOCHAT_BASE_DIR/download.log" 2>&1 & DL_PID=$!; fi
else
  SOURCE=embedded
  echo "offline: building the embedded corpus from the local Python install"
  "$PY" -m nanochat.dataset --source=embedded
fi

stage "tokenizer: train (vocab $VOCAB_SIZE)"
TOK_SOURCE="$SOURCE"
[ "$SOURCE" = fineweb-edu ] && TOK_SOURCE="$NANOCHAT_BASE_DIR/base_data"
"$PY" -m scripts.tok_train --vocab_size="$VOCAB_SIZE" --source="$TOK_SOURCE"
stage "tokenizer: evaluate"
"$PY" -m scripts.tok_eval

if [ -n "${DL_PID:-}" ]; then stage "waiting for the shard download"; wait "$DL_PID"; fi
stage "base model: pretrain"
"${LAUNCH[@]}" -m scripts.base_train --source="$SOURCE" --resume=auto "${TRAIN_ARGS[@]}"
stage "base model: loss and samples"
"${LAUNCH[@]}" -m scripts.base_loss --source="$SOURCE" "${LOSS_ARGS[@]}"
stage "done"
echo "artifacts in $NANOCHAT_BASE_DIR"
echo "talk to the base model (chat training comes next): $PY -m scripts.chat_cli --source=base -p 'The capital of France is'"
