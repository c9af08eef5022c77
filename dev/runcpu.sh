#!/usr/bin/env bash
# A few-minute smoke run of the whole pipeline on any machine (CPU, or MPS on a Mac): a tiny model
# through every stage of speedrun.sh, offline, in its own base dir so it never mixes with a real run.
#   bash dev/runcpu.sh                          # about 2 minutes on 2 cores
#   BASE_STEPS=300 DEPTH=4 bash dev/runcpu.sh   # speedrun's own CPU size
#   NANOCHAT_LANG=ko bash dev/runcpu.sh         # the Korean run (konlpy texts), in ~/.cache/nanochat_cpu_ko
# Any speedrun.sh knob works (DEPTH, SEQ_LEN, VOCAB_SIZE, BASE_STEPS, MID_STEPS, SFT_STEPS, EVAL_PROBLEMS).
set -euo pipefail
cd "$(dirname "$0")/.."
export CPU_RUN=1
export NANOCHAT_OFFLINE="${NANOCHAT_OFFLINE:-1}"
# shellcheck source=dev/lang.sh
source dev/lang.sh
lang_check
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$(lang_base_dir "$HOME/.cache/nanochat_cpu")}"
export DEPTH="${DEPTH:-2}" SEQ_LEN="${SEQ_LEN:-128}" VOCAB_SIZE="${VOCAB_SIZE:-1024}"
export BASE_STEPS="${BASE_STEPS:-100}" MID_STEPS="${MID_STEPS:-40}" SFT_STEPS="${SFT_STEPS:-30}"
export EVAL_PROBLEMS="${EVAL_PROBLEMS:-5}"
exec bash speedrun.sh
