#!/usr/bin/env bash
# The whole pipeline from nothing: environment, data, tokenizer, base model, midtraining, SFT,
# (optional RL), evaluation after each phase, and the report card.
#   bash speedrun.sh                      # picks a configuration for this machine
#   NANOCHAT_OFFLINE=1 bash speedrun.sh   # force the embedded offline corpus and offline chat mixtures
#   NANOCHAT_LANG=ko bash speedrun.sh     # the Korean run, in ~/.cache/nanochat_ko (below)
# On a GPU node: every visible GPU through torchrun, sized by the memory of the smallest one (a preset
# of nanochat/plan.py: d8 on 6-8 GB up to upstream's d20 on 80 GB and more), FineWeb-Edu shards and
# the chat datasets when the network allows; on an Apple GPU (MPS) a small preset in one process.
# Without either: a CPU-sized run (depth 4, seq 256, vocab 4096) that finishes in about 10 minutes on
# 2 cores. The preset and its time and cost estimate are printed before any stage. Every artifact
# goes to $NANOCHAT_BASE_DIR (~/.cache/nanochat).
#
# NANOCHAT_LANG: en (the default) or ko, the same run for a Korean model: FineWeb-2 Korean shards
# (offline: the konlpy texts, embedded-ko, 52K characters, CPU only), a tokenizer with --pattern=korean
# and a fifth English (FineWeb-Edu; offline the embedded corpus), the Korean chat presets mid-ko and
# sft-ko (CPU or offline: mid-ko-offline, sft-ko-offline) naming the model 나노챗, and KoBEST and KMMLU
# beside the English evaluations; RL, when asked for, is the English one (chat_rl has no Korean task).
# Its artifacts go to ~/.cache/nanochat_ko unless NANOCHAT_BASE_DIR says otherwise; a base dir holding
# the other language's run is refused (the language is recorded in $NANOCHAT_BASE_DIR/language).
#
# Resumable: each completed stage leaves $NANOCHAT_BASE_DIR/stages/<stage>.done, and running the
# script again skips those and resumes the interrupted one from its last checkpoint (a lost pod, a
# crash, Ctrl-C). To start over, point NANOCHAT_BASE_DIR at a fresh directory.
# Knobs (environment): DEPTH, VOCAB_SIZE, SEQ_LEN, COMPILE (1/0; GPU and MPS), DEVICE_BATCH_SIZE (GPU
# and MPS; default auto), each winning over the preset; BASE_STEPS, MID_STEPS, SFT_STEPS, RL_STEPS,
# EVAL_PROBLEMS, CPU_RUN=1 (the CPU configuration on a GPU machine), RUN_RL=1, DRY_RUN=1 (print the plan
# and each stage's command, run none),
# NPROC_PER_NODE (processes, default every GPU CUDA_VISIBLE_DEVICES leaves visible), NUM_SHARDS
# (default: what DEPTH needs, nanochat/plan.py), WANDB_RUN=NAME (logs to wandb: installs the extra;
# dummy or none = off), IDENTITY_NAME / IDENTITY_CREATOR (who the identity conversations say the model
# is; ko: 나노챗); the step counts default to the phases' own horizons on GPU.
# SIGTERM to this script stops the running stage the way dev/launch.sh stop does (a training phase
# saves a checkpoint and exits 143); a rerun resumes it.
set -euo pipefail
cd "$(dirname "$0")"
die() { echo "error: $*" >&2; exit 1; }
# shellcheck source=dev/lang.sh
source dev/lang.sh
lang_check
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$(lang_base_dir "$HOME/.cache/nanochat")}"
lang_refuse_other "$NANOCHAT_BASE_DIR"  # before the set-up: a wrong dir is said at once
KO=0
if [ "$NANOCHAT_LANG" = ko ]; then
  KO=1
  # konlpy: the offline Korean corpus (embedded-ko)
  case ",${NANOCHAT_EXTRAS:-}," in *,ko,*) ;; *) export NANOCHAT_EXTRAS="${NANOCHAT_EXTRAS:+$NANOCHAT_EXTRAS,}ko" ;; esac
fi
WANDB=0
case "${WANDB_RUN:-}" in ""|dummy|none) ;; *) WANDB=1 ;; esac
if [ "$WANDB" = 1 ]; then
  case ",${NANOCHAT_EXTRAS:-}," in *,wandb,*) ;; *) export NANOCHAT_EXTRAS="${NANOCHAT_EXTRAS:+$NANOCHAT_EXTRAS,}wandb" ;; esac
fi
# shellcheck source=dev/setup_env.sh
source dev/setup_env.sh
# shellcheck source=dev/gpus.sh
source dev/gpus.sh
PY=.venv/bin/python
STAGES="$NANOCHAT_BASE_DIR/stages"

# ---- checks that would otherwise fail hours in, before any stage
if [ "$WANDB" = 1 ]; then
  "$PY" -c 'import wandb' 2>/dev/null || die "WANDB_RUN=$WANDB_RUN logs to wandb, which does not import: .venv/bin/python -m pip install wandb (or uv pip install -e '.[wandb]'), or unset WANDB_RUN"
  # wandb.init cannot ask for a key without a terminal: it needs one from `wandb login` (~/.netrc) or the environment
  if [ -z "${WANDB_API_KEY:-}" ] && ! grep -qs 'api.wandb.ai' "${NETRC:-$HOME/.netrc}"; then
    case "${WANDB_MODE:-}" in offline|disabled|dryrun) ;; *)
      die "WANDB_RUN=$WANDB_RUN but wandb has no API key: run .venv/bin/wandb login (or export WANDB_API_KEY=..., or WANDB_MODE=offline)" ;;
    esac
  fi
fi
NGPU=$(visible_gpu_count)
if [ "${CPU_RUN:-0}" = 1 ]; then NGPU=0; fi  # the CPU configuration even where GPUs exist (dev/runcpu.sh)
if [ "$NGPU" -gt 0 ]; then
  # a CPU-only torch on a GPU machine would train d20 on the CPU for weeks without a word
  read -r TORCH_GPUS TORCH_VERSION < <("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0, torch.__version__)' 2>/dev/null || echo "0 (does-not-import)")
  [ "$TORCH_GPUS" -gt 0 ] || die "nvidia-smi lists $NGPU GPU(s) but torch $TORCH_VERSION cannot use CUDA: install a CUDA build (uv pip install --python .venv/bin/python --reinstall torch) and check the driver with nvidia-smi, or CPU_RUN=1 for the small CPU run"
  NGPU=$TORCH_GPUS  # torch's own count (CUDA_VISIBLE_DEVICES and all)
  if [ -n "${NPROC_PER_NODE:-}" ]; then
    [[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]] && [ "$NPROC_PER_NODE" -le "$NGPU" ] \
      || die "NPROC_PER_NODE=$NPROC_PER_NODE: this machine shows $NGPU GPU(s) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); set 1 to $NGPU"
    NGPU=$NPROC_PER_NODE
  fi
fi
# an Apple GPU on a Mac (where no torch import is spent elsewhere) unless the CPU configuration was asked for
ACCEL=cpu
if [ "$NGPU" -gt 0 ]; then
  ACCEL=cuda
elif [ "${CPU_RUN:-0}" != 1 ] && [ "$(uname -s)" = Darwin ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.backends.mps.is_available() else 1)' 2>/dev/null; then
  ACCEL=mps
fi
mkdir -p "$STAGES"
lang_claim "$NANOCHAT_BASE_DIR"

fmt() { printf '%dh%02dm%02ds' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }
# SIGTERM (runpod_speedrun.sh's MAX_HOURS, a plain kill): passed to the running stage's processes
# except torchrun itself, which on SIGTERM would SIGKILL its ranks 30 s later, maybe mid-save;
# without a rank torchrun exits by itself
STAGE_PID=""
STOPPED=0
stage_processes() {  # pid: it and its descendants, torchrun excepted
  ps -A -o pid=,ppid=,args= | awk -v root="$1" '
    { pid = $1; parent[pid] = $2; $1 = $2 = ""; args[pid] = $0 }
    END {
      keep[root] = 1
      do { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } } while (grew)
      for (p in keep) if (!(args[p] ~ /torch[.]distributed[.]run/)) print p
    }'
}
stop_stage() {
  STOPPED=1
  if [ -z "$STAGE_PID" ]; then  # between stages: nothing runs, so nothing is lost
    echo "error: stopped by SIGTERM between stages: run again to go on from the next one" >&2
    exit 143
  fi
  echo "speedrun: SIGTERM: stopping the running stage (a training phase finishes its step and saves a checkpoint)"
  # shellcheck disable=SC2046  # a list of pids
  kill -TERM $(stage_processes "$STAGE_PID") 2>/dev/null || true
}
trap stop_stage TERM
# run_stage NAME COMMAND...: skipped when already complete; a failure stops the run naming the stage
run_stage() {
  local name=$1 t0=$SECONDS rc=0
  shift
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "== $name: $*"
    return 0
  fi
  if [ -f "$STAGES/$name.done" ]; then
    echo "== $name: complete in an earlier run, skipped"
    return 0
  fi
  echo
  echo "== $name ($(date +%H:%M:%S)) =="
  # in the background so that the TERM trap runs at once (bash delays traps until a foreground child ends)
  "$@" &
  STAGE_PID=$!
  while :; do
    rc=0
    wait "$STAGE_PID" || rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$STAGE_PID" 2>/dev/null; then continue; fi  # the trap woke the wait
    break
  done
  STAGE_PID=""
  if [ "$STOPPED" = 1 ]; then
    echo "error: stage '$name' stopped by SIGTERM (exit $rc): run again to resume it (a training phase saves a checkpoint first)" >&2
    exit 143
  fi
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

ONLINE=0
if [ "${NANOCHAT_OFFLINE:-0}" != 1 ] && "$PY" - <<'EOF' 2>/dev/null; then ONLINE=1; fi
import urllib.request
urllib.request.urlopen("https://huggingface.co", timeout=5)
EOF
# the Korean run offline trains on embedded-ko, 52K characters (~1,500 validation tokens at vocab
# 4096): a GPU would have nothing to train on, and on CPU a validation batch of 8 x 257 tokens would
# not fit where 8 x 129 does
if [ "$KO" = 1 ] && [ "$ONLINE" = 0 ]; then
  [ "$NGPU" -eq 0 ] || die "NANOCHAT_LANG=ko offline has only the konlpy texts (52K characters) to train on, too little for a GPU run: run it online (FineWeb-2 Korean), or CPU_RUN=1 for the small CPU run"
  SEQ_LEN="${SEQ_LEN:-128}"
fi

# the preset of this machine (nanochat/plan.py), with DEPTH, SEQ_LEN, VOCAB_SIZE, COMPILE and
# DEVICE_BATCH_SIZE winning over it; its summary line is printed before any stage
OVERRIDES=(--depth="${DEPTH:-}" --max_seq_len="${SEQ_LEN:-}" --vocab_size="${VOCAB_SIZE:-}")
if [ "$ACCEL" != cpu ]; then
  OVERRIDES+=(--compile="${COMPILE:-}" --device_batch_size="${DEVICE_BATCH_SIZE:-}")
  if [ "$ACCEL" = cuda ]; then
    IFS=$'\t' read -r GPU_MEM_MB GPU_NAME < <(smallest_visible_gpu "$NGPU") || true
    PLAN=$("$PY" -m nanochat.plan --gpus="$NGPU" --gpu_name="${GPU_NAME:-}" --gpu_mem_mb="${GPU_MEM_MB:-0}" \
           "${OVERRIDES[@]}") || exit 1
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one process per GPU: CPU threads would only contend
    LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU")
  else
    PLAN=$("$PY" -m nanochat.plan --device_type=mps "${OVERRIDES[@]}") || exit 1
    NGPU=1  # one device: the downloads and chat datasets of a GPU run (data and shards stages)
    LAUNCH=("$PY")
  fi
  eval "$PLAN"
  # any GPU count: the step stays near the preset's size (d20: ~524,288 tokens, ~32 SFT conversations)
  # by rounding the gradient accumulation; the device batch is auto (the largest that fits) unless set
  NUM_SHARDS="${NUM_SHARDS:-$PLAN_NUM_SHARDS}"  # what DEPTH needs (d20: 240, d26: 460, d32: 800)
  MODEL=(--max_seq_len="$SEQ_LEN" --compile="$COMPILE")
  BATCH=(--device_batch_size="$DEVICE_BATCH_SIZE" --total_batch_size="$TOTAL_BATCH_SIZE")
  BASE_ARGS=(--depth="$DEPTH" --run="${WANDB_RUN:-none}" --save_every=1000 "${MODEL[@]}" "${BATCH[@]}")
  LOSS_ARGS=(--device_batch_size="$EVAL_DEVICE_BATCH_SIZE")  # base_loss has no auto batch
  MID_ARGS=(--run="${WANDB_RUN:-none}" --save_every=500 "${MODEL[@]}" "${BATCH[@]}")
  SFT_ARGS=(--run="${WANDB_RUN:-none}" --save_every=500 --target_examples_per_step="$SFT_EXAMPLES_PER_STEP" "${MODEL[@]}")
  RL_ARGS=(--run="${WANDB_RUN:-none}" --save_every=60 --examples_per_step="$RL_EXAMPLES_PER_STEP" "${MODEL[@]}")
  if [ -n "${BASE_STEPS:-}" ]; then BASE_ARGS+=(--num_iterations="$BASE_STEPS"); fi
  if [ -n "${MID_STEPS:-}" ]; then MID_ARGS+=(--num_iterations="$MID_STEPS"); fi
  if [ -n "${SFT_STEPS:-}" ]; then SFT_ARGS+=(--num_iterations="$SFT_STEPS"); fi
  if [ -n "${RL_STEPS:-}" ]; then RL_ARGS+=(--num_iterations="$RL_STEPS"); fi
  EVAL_ARGS=()
  CORE_ARGS=()
  [ -n "${EVAL_PROBLEMS:-}" ] && EVAL_ARGS=(--max_problems="$EVAL_PROBLEMS")
  echo "$PLAN_SUMMARY"
  echo "data: $NUM_SHARDS FineWeb-Edu shards when online"
else
  PLAN=$("$PY" -m nanochat.plan --device_type=cpu "${OVERRIDES[@]}") || exit 1
  eval "$PLAN"
  LAUNCH=("$PY")
  # ~2k tokens per step at ~1 step/s on 2 cores: 300 steps is ~5 minutes and clearly lowers bpb
  BASE_ARGS=(--depth="$DEPTH" --max_seq_len="$SEQ_LEN" --device_batch_size=8 --total_batch_size=none
             --num_iterations="${BASE_STEPS:-300}" --eval_every=100 --eval_tokens=65536 --sample_every=300
             --save_every=100 --warmdown_ratio=0.3 --run="${WANDB_RUN:-none}")
  LOSS_ARGS=(--device_batch_size=8 --eval_tokens=65536)
  CHAT_CPU=(--max_seq_len="$SEQ_LEN" --eval_every=50 --eval_batches=20 --save_every=50 --run="${WANDB_RUN:-none}")
  MID_ARGS=("${CHAT_CPU[@]}" --device_batch_size=8 --total_batch_size=none --num_iterations="${MID_STEPS:-150}")
  # a small model trained for minutes needs more than SFT's usual 2% of the base learning rates to move
  SFT_ARGS=("${CHAT_CPU[@]}" --device_batch_size=4 --target_examples_per_step=8 --num_iterations="${SFT_STEPS:-100}"
            --init_lr_frac=0.1)
  RL_ARGS=(--max_seq_len="$SEQ_LEN" --run="${WANDB_RUN:-none}" --examples_per_step=4 --num_samples=4 --max_new_tokens=64
           --num_iterations="${RL_STEPS:-30}" --eval_every=15 --max_problems="${EVAL_PROBLEMS:-20}" --save_every=15)
  EVAL_ARGS=(--max_problems="${EVAL_PROBLEMS:-20}" --max_new_tokens=128)
  CORE_ARGS=(--max_problems="${EVAL_PROBLEMS:-20}" --device_batch_size=8)
  echo "$PLAN_SUMMARY"
fi
if [ "$ONLINE" = 1 ]; then CORPUS=fineweb-edu; CHAT_DATA=(); else CORPUS=embedded; CHAT_DATA=(--offline); fi
# the chat phases on CPU use the offline mixtures: a few hundred steps would not get far into SmolTalk
[ "$NGPU" -eq 0 ] && CHAT_DATA=(--offline)
# the Korean run: FineWeb-2 Korean online, the konlpy texts offline
if [ "$KO" = 1 ]; then
  if [ "$CORPUS" = fineweb-edu ]; then CORPUS=ko; else CORPUS=embedded-ko; fi
fi
TOK_CORPUS="$CORPUS"
[ "$CORPUS" = fineweb-edu ] && TOK_CORPUS="$NANOCHAT_BASE_DIR/base_data"
# the identity conversations' name and creator (IDENTITY_NAME, IDENTITY_CREATOR; unset: the
# language's default, dev/lang.sh, else the phases' own)
if [ -n "${IDENTITY_NAME:-}" ]; then MID_ARGS+=(--identity_name="$IDENTITY_NAME"); SFT_ARGS+=(--identity_name="$IDENTITY_NAME"); fi
if [ -n "${IDENTITY_CREATOR:-}" ]; then MID_ARGS+=(--identity_creator="$IDENTITY_CREATOR"); SFT_ARGS+=(--identity_creator="$IDENTITY_CREATOR"); fi
# the language's options of each script (dev/lang.sh; none in English): for Korean the tokenizer's
# English fifth and split pattern, the Korean chat presets (with --offline, mid_train and chat_sft
# take mid-ko-offline / sft-ko-offline) named 나노챗, KoBEST and KMMLU beside the English evaluations
mapfile -t TOK_ARGS < <(lang_options tok_train --corpus="$TOK_CORPUS")
mapfile -t -O "${#MID_ARGS[@]}" MID_ARGS < <(lang_options mid_train "${MID_ARGS[@]}")
mapfile -t -O "${#SFT_ARGS[@]}" SFT_ARGS < <(lang_options chat_sft "${SFT_ARGS[@]}")
mapfile -t CORE_TASKS < <(lang_options base_eval)
mapfile -t CHAT_TASKS < <(lang_options chat_eval)

run_stage report-reset "$PY" -m nanochat.report reset

data() {
  if [ "$CORPUS" = fineweb-edu ] || [ "$CORPUS" = ko ]; then
    # 8 shards (~2B chars) for the tokenizer now; the rest (d20: 240) while the tokenizer trains
    "$PY" -m nanochat.dataset --corpus="$CORPUS" -n 8
    # the Korean tokenizer's English fifth: 2 FineWeb-Edu shards (~500M characters)
    if [ "$KO" = 1 ]; then "$PY" -m nanochat.dataset --corpus=fineweb-edu -n 2; fi
    if [ "$NGPU" -gt 0 ]; then
      "$PY" -m nanochat.dataset --corpus="$CORPUS" -n "$NUM_SHARDS" > "$NANOCHAT_BASE_DIR/download.log" 2>&1 &
      echo $! > "$STAGES/download.pid"
    fi
    # every chat and evaluation dataset of tasks/sources.py, KoAlpaca, KoBEST and KMMLU included
    if [ "${#CHAT_DATA[@]}" -eq 0 ]; then "$PY" -m tasks.sources --dataset=all; fi
  else
    if [ "$KO" = 1 ]; then echo "offline: building the Korean embedded corpus from the konlpy wheel"
    else echo "offline: building the embedded corpus from the local Python install"; fi
    "$PY" -m nanochat.dataset --corpus="$CORPUS"
  fi
}
run_stage data data

run_stage tokenizer "$PY" -m scripts.tok_train --vocab_size="$VOCAB_SIZE" --corpus="$TOK_CORPUS" "${TOK_ARGS[@]}"
run_stage tokenizer-eval "$PY" -m scripts.tok_eval

shards() {
  # the background download of the data stage; after a restart it is simply fetched again (skipping what is there)
  if [ -f "$STAGES/download.pid" ] && kill -0 "$(cat "$STAGES/download.pid")" 2>/dev/null; then
    echo "waiting for the shard download (log: $NANOCHAT_BASE_DIR/download.log)"
    while kill -0 "$(cat "$STAGES/download.pid")" 2>/dev/null; do sleep 5; done
  fi
  if { [ "$CORPUS" = fineweb-edu ] || [ "$CORPUS" = ko ]; } && [ "$NGPU" -gt 0 ]; then
    "$PY" -m nanochat.dataset --corpus="$CORPUS" -n "$NUM_SHARDS"
  fi
  rm -f "$STAGES/download.pid"
}
run_stage shards shards
run_stage base-train "${LAUNCH[@]}" -m scripts.base_train --corpus="$CORPUS" --resume=auto "${BASE_ARGS[@]}"
run_stage base-loss "${LAUNCH[@]}" -m scripts.base_loss --corpus="$CORPUS" "${LOSS_ARGS[@]}"
# an evaluation whose data is not here (offline: the CORE bundle, ARC, MMLU, GSM8K, KoBEST, KMMLU) is
# skipped, and the report says so with the command that fetches it
base_eval() {
  if [ "$ONLINE" = 1 ]; then "$PY" -m scripts.base_eval --download_only; fi
  "${LAUNCH[@]}" -m scripts.base_eval "${CORE_ARGS[@]}" "${CORE_TASKS[@]}" --skip_unavailable
}
run_stage base-eval base_eval
run_stage mid-train "${LAUNCH[@]}" -m scripts.mid_train --resume=auto "${CHAT_DATA[@]}" "${MID_ARGS[@]}"
run_stage mid-eval "${LAUNCH[@]}" -m scripts.chat_eval -i mid "${EVAL_ARGS[@]}" "${CHAT_TASKS[@]}" --skip_unavailable
run_stage sft-train "${LAUNCH[@]}" -m scripts.chat_sft --resume=auto "${CHAT_DATA[@]}" "${SFT_ARGS[@]}"
run_stage sft-eval "${LAUNCH[@]}" -m scripts.chat_eval -i sft "${EVAL_ARGS[@]}" "${CHAT_TASKS[@]}" --skip_unavailable
if [ "${RUN_RL:-0}" = 1 ]; then
  # GSM8K online; offline (and on CPU) the generated arithmetic word problems, scored the same way
  # (the Korean run too: chat_rl has no Korean task; its evaluation adds the Korean set)
  RL_EVAL=GSM8K
  if [ "${#CHAT_DATA[@]}" -gt 0 ]; then RL_EVAL='HumanEval|SpellingBee'; fi
  if [ "$KO" = 1 ]; then RL_EVAL+='|korean'; fi
  run_stage rl-train "${LAUNCH[@]}" -m scripts.chat_rl --resume=auto "${CHAT_DATA[@]}" "${RL_ARGS[@]}"
  run_stage rl-eval "${LAUNCH[@]}" -m scripts.chat_eval -i rl -a "$RL_EVAL" "${EVAL_ARGS[@]}" --skip_unavailable
fi

if [ "${DRY_RUN:-0}" = 1 ]; then exit 0; fi
echo
echo "== report ($(date +%H:%M:%S)) =="
"$PY" -m nanochat.report generate
echo "artifacts in $NANOCHAT_BASE_DIR; report: $NANOCHAT_BASE_DIR/report/report.md (copied to ./report.md)"
if [ "$KO" = 1 ]; then echo "talk to it: $PY -m scripts.chat_cli -p '하늘은 왜 파란가요?'"
else echo "talk to it: $PY -m scripts.chat_cli -p 'Why is the sky blue?'"; fi
if [ -n "${RUNPOD_POD_ID:-}" ]; then
  echo "in a browser: $PY -m scripts.chat_web, then open https://$RUNPOD_POD_ID-8000.proxy.runpod.net/ (the pod must expose HTTP port 8000: Connect -> HTTP Service [8000])"
else
  echo "in a browser: $PY -m scripts.chat_web, then open http://127.0.0.1:8000/ (from another computer: ssh -L 8000:127.0.0.1:8000 this-machine)"
fi
