#!/usr/bin/env bash
# The whole pipeline from nothing: environment, data, tokenizer, base model, midtraining, SFT,
# (optional RL), evaluation after each phase, and the report card.
#   bash speedrun.sh                      # picks a configuration for this machine
#   NANOCHAT_OFFLINE=1 bash speedrun.sh   # force the embedded offline corpus and offline chat mixtures
# On a GPU node: d20 on every visible GPU through torchrun, FineWeb-Edu shards and the chat datasets
# when the network allows. Without a GPU: a CPU-sized run (depth 4, seq 256, vocab 4096) that
# finishes in about 15 minutes on 2 cores. Every artifact goes to $NANOCHAT_BASE_DIR (~/.cache/nanochat).
#
# Resumable: each completed stage leaves $NANOCHAT_BASE_DIR/stages/<stage>.done, and running the
# script again skips those and resumes the interrupted one from its last checkpoint (a lost pod, a
# crash, Ctrl-C). To start over, point NANOCHAT_BASE_DIR at a fresh directory.
# Knobs (environment): DEPTH, VOCAB_SIZE, SEQ_LEN, BASE_STEPS, MID_STEPS, SFT_STEPS, RL_STEPS, EVAL_PROBLEMS,
# DEVICE_BATCH_SIZE (GPU), CPU_RUN=1 (the CPU configuration on a GPU machine), RUN_RL=1, WANDB_RUN, NUM_SHARDS; the step counts default to the phases' own horizons on GPU.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=dev/setup_env.sh
source dev/setup_env.sh
PY=.venv/bin/python
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
STAGES="$NANOCHAT_BASE_DIR/stages"
mkdir -p "$STAGES"

fmt() { printf '%dh%02dm%02ds' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }
# run_stage NAME COMMAND...: skipped when already complete; a failure stops the run naming the stage
run_stage() {
  local name=$1 t0=$SECONDS rc=0
  shift
  if [ -f "$STAGES/$name.done" ]; then
    echo "== $name: complete in an earlier run, skipped"
    return 0
  fi
  echo
  echo "== $name ($(date +%H:%M:%S)) =="
  "$@" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "error: stage '$name' failed (exit $rc); its output is above${SPEEDRUN_LOG:+ and in $SPEEDRUN_LOG}. Fix the cause and run again: completed stages are skipped and this one resumes" >&2
    exit "$rc"
  fi
  echo "$((SECONDS - t0))" > "$STAGES/$name.done"
  echo "$name $((SECONDS - t0))" >> "$STAGES/durations.txt"
  echo "== $name done in $(fmt $((SECONDS - t0)))"
}
done_before=$(find "$STAGES" -name '*.done' | wc -l)
if [ "$done_before" -gt 0 ]; then
  echo "resuming: $done_before stage(s) already complete in $NANOCHAT_BASE_DIR (use a fresh NANOCHAT_BASE_DIR to start over)"
fi

NGPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
  NGPU=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
fi
if [ "${CPU_RUN:-0}" = 1 ]; then NGPU=0; fi  # the CPU configuration even where GPUs exist (dev/runcpu.sh)
ONLINE=0
if [ "${NANOCHAT_OFFLINE:-0}" != 1 ] && "$PY" - <<'EOF' 2>/dev/null; then ONLINE=1; fi
import urllib.request
urllib.request.urlopen("https://huggingface.co", timeout=5)
EOF

if [ "$NGPU" -gt 0 ]; then
  DEPTH="${DEPTH:-20}"; VOCAB_SIZE="${VOCAB_SIZE:-65536}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one process per GPU: CPU threads would only contend
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU")
  # any GPU count: the step stays ~524,288 tokens (and ~32 SFT conversations) by rounding the
  # gradient accumulation, so 3 or 6 GPUs work as well as 8; DEVICE_BATCH_SIZE lowers memory use
  DBS="${DEVICE_BATCH_SIZE:-32}"
  PER_PASS=$((DBS * 2048 * NGPU))
  ACCUM=$(((524288 + PER_PASS / 2) / PER_PASS)); [ "$ACCUM" -ge 1 ] || ACCUM=1
  SFT_PER_PASS=$((4 * NGPU))
  SFT_ACCUM=$(((32 + SFT_PER_PASS / 2) / SFT_PER_PASS)); [ "$SFT_ACCUM" -ge 1 ] || SFT_ACCUM=1
  BATCH=(--device_batch_size="$DBS" --total_batch_size=$((PER_PASS * ACCUM)))
  BASE_ARGS=(--depth="$DEPTH" --run="${WANDB_RUN:-dummy}" --save_every=1000 "${BATCH[@]}")
  LOSS_ARGS=(--device_batch_size="$DBS")
  MID_ARGS=(--run="${WANDB_RUN:-dummy}" --save_every=500 "${BATCH[@]}")
  SFT_ARGS=(--run="${WANDB_RUN:-dummy}" --save_every=500 --target_examples_per_step=$((SFT_PER_PASS * SFT_ACCUM)))
  # RL prompts per step must split evenly over the GPUs
  RL_ARGS=(--run="${WANDB_RUN:-dummy}" --save_every=60 --examples_per_step=$(((16 + NGPU - 1) / NGPU * NGPU)))
  if [ -n "${BASE_STEPS:-}" ]; then BASE_ARGS+=(--num_iterations="$BASE_STEPS"); fi
  if [ -n "${MID_STEPS:-}" ]; then MID_ARGS+=(--num_iterations="$MID_STEPS"); fi
  if [ -n "${SFT_STEPS:-}" ]; then SFT_ARGS+=(--num_iterations="$SFT_STEPS"); fi
  if [ -n "${RL_STEPS:-}" ]; then RL_ARGS+=(--num_iterations="$RL_STEPS"); fi
  EVAL_ARGS=()
  CORE_ARGS=()
  [ -n "${EVAL_PROBLEMS:-}" ] && EVAL_ARGS=(--max_problems="$EVAL_PROBLEMS")
  echo "GPU run: $NGPU GPU(s), depth $DEPTH"
else
  DEPTH="${DEPTH:-4}"; VOCAB_SIZE="${VOCAB_SIZE:-4096}"; SEQ_LEN="${SEQ_LEN:-256}"
  LAUNCH=("$PY")
  # ~2k tokens per step at ~1 step/s on 2 cores: 300 steps is ~5 minutes and clearly lowers bpb
  BASE_ARGS=(--depth="$DEPTH" --max_seq_len="$SEQ_LEN" --device_batch_size=8 --total_batch_size=-1
             --num_iterations="${BASE_STEPS:-300}" --eval_every=100 --eval_tokens=65536 --sample_every=300
             --save_every=100 --warmdown_ratio=0.3)
  LOSS_ARGS=(--device_batch_size=8 --split_tokens=65536)
  CHAT_CPU=(--max_seq_len="$SEQ_LEN" --eval_every=50 --eval_batches=20 --save_every=50)
  MID_ARGS=("${CHAT_CPU[@]}" --device_batch_size=8 --total_batch_size=-1 --num_iterations="${MID_STEPS:-150}")
  # a small model trained for minutes needs more than SFT's usual 2% of the base learning rates to move
  SFT_ARGS=("${CHAT_CPU[@]}" --device_batch_size=4 --target_examples_per_step=8 --num_iterations="${SFT_STEPS:-100}"
            --init_lr_frac=0.1)
  RL_ARGS=(--max_seq_len="$SEQ_LEN" --examples_per_step=4 --num_samples=4 --max_new_tokens=64
           --num_iterations="${RL_STEPS:-30}" --eval_every=15 --eval_examples="${EVAL_PROBLEMS:-20}" --save_every=15)
  EVAL_ARGS=(--max_problems="${EVAL_PROBLEMS:-20}" --max_new_tokens=128)
  CORE_ARGS=(--max_problems="${EVAL_PROBLEMS:-20}" --device_batch_size=8)
  echo "CPU run: no GPU found; a small configuration that finishes in minutes"
fi
if [ "$ONLINE" = 1 ]; then SOURCE=fineweb-edu; CHAT_DATA=(); else SOURCE=embedded; CHAT_DATA=(--offline); fi
# the chat phases on CPU use the offline mixtures: a few hundred steps would not get far into SmolTalk
[ "$NGPU" -eq 0 ] && CHAT_DATA=(--offline)

run_stage report-reset "$PY" -m nanochat.report reset

data() {
  if [ "$SOURCE" = fineweb-edu ]; then
    # 8 shards (~2B chars) for the tokenizer now; d20 needs ~240, fetched while the tokenizer trains
    "$PY" -m nanochat.dataset -n 8
    if [ "$NGPU" -gt 0 ]; then
      "$PY" -m nanochat.dataset -n "${NUM_SHARDS:-240}" > "$NANOCHAT_BASE_DIR/download.log" 2>&1 &
      echo $! > "$STAGES/download.pid"
    fi
    if [ "${#CHAT_DATA[@]}" -eq 0 ]; then "$PY" -m tasks.sources --dataset=all; fi
  else
    echo "offline: building the embedded corpus from the local Python install"
    "$PY" -m nanochat.dataset --source=embedded
  fi
}
run_stage data data

TOK_SOURCE="$SOURCE"
[ "$SOURCE" = fineweb-edu ] && TOK_SOURCE="$NANOCHAT_BASE_DIR/base_data"
run_stage tokenizer "$PY" -m scripts.tok_train --vocab_size="$VOCAB_SIZE" --source="$TOK_SOURCE"
run_stage tokenizer-eval "$PY" -m scripts.tok_eval

shards() {
  # the background download of the data stage; after a restart it is simply fetched again (skipping what is there)
  if [ -f "$STAGES/download.pid" ] && kill -0 "$(cat "$STAGES/download.pid")" 2>/dev/null; then
    echo "waiting for the shard download (log: $NANOCHAT_BASE_DIR/download.log)"
    while kill -0 "$(cat "$STAGES/download.pid")" 2>/dev/null; do sleep 5; done
  fi
  if [ "$SOURCE" = fineweb-edu ] && [ "$NGPU" -gt 0 ]; then "$PY" -m nanochat.dataset -n "${NUM_SHARDS:-240}"; fi
  rm -f "$STAGES/download.pid"
}
run_stage shards shards
run_stage base-train "${LAUNCH[@]}" -m scripts.base_train --source="$SOURCE" --resume=auto "${BASE_ARGS[@]}"
run_stage base-loss "${LAUNCH[@]}" -m scripts.base_loss --source="$SOURCE" "${LOSS_ARGS[@]}"
base_eval() {
  if [ "$ONLINE" = 1 ] || [ -f "$NANOCHAT_BASE_DIR/eval_bundle/core.yaml" ]; then
    "${LAUNCH[@]}" -m scripts.base_eval "${CORE_ARGS[@]}"
  else  # the CORE bundle is a download: say so in the report instead of failing the run
    echo "CORE: not available offline (the eval bundle is downloaded: python -m scripts.base_eval --download_only)"
    "$PY" -c 'from nanochat.report import SECTION_BASE_EVAL, log_section
log_section(SECTION_BASE_EVAL, {"CORE": None}, notes=["CORE not available offline: its eval bundle is a download (python -m scripts.base_eval --download_only)"])'
  fi
}
run_stage base-eval base_eval
run_stage mid-train "${LAUNCH[@]}" -m scripts.mid_train --resume=auto "${CHAT_DATA[@]}" "${MID_ARGS[@]}"
run_stage mid-eval "${LAUNCH[@]}" -m scripts.chat_eval -i mid "${EVAL_ARGS[@]}"
run_stage sft-train "${LAUNCH[@]}" -m scripts.chat_sft --resume=auto "${CHAT_DATA[@]}" "${SFT_ARGS[@]}"
run_stage sft-eval "${LAUNCH[@]}" -m scripts.chat_eval -i sft "${EVAL_ARGS[@]}"
if [ "${RUN_RL:-0}" = 1 ]; then
  # GSM8K online; offline (and on CPU) the generated arithmetic word problems, scored the same way
  RL_EVAL=(-a GSM8K)
  if [ "${#CHAT_DATA[@]}" -gt 0 ]; then RL_EVAL=(-a 'HumanEval|SpellingBee'); fi
  run_stage rl-train "${LAUNCH[@]}" -m scripts.chat_rl --resume=auto "${CHAT_DATA[@]}" "${RL_ARGS[@]}"
  run_stage rl-eval "${LAUNCH[@]}" -m scripts.chat_eval -i rl "${RL_EVAL[@]}" "${EVAL_ARGS[@]}"
fi

echo
echo "== report ($(date +%H:%M:%S)) =="
"$PY" -m nanochat.report generate
echo "artifacts in $NANOCHAT_BASE_DIR; report: $NANOCHAT_BASE_DIR/report/report.md (copied to ./report.md)"
echo "talk to it: $PY -m scripts.chat_cli -p 'Why is the sky blue?'   or in a browser: $PY -m scripts.chat_web"
