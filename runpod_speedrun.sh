#!/usr/bin/env bash
# speedrun.sh on a rented GPU pod (RunPod: the persistent volume is /workspace), unattended.
#   screen -L -S speedrun bash runpod_speedrun.sh       # then Ctrl-a d to detach; screen -r to come back
#   RUN_RL=1 AUTO_BACKUP=1 AUTO_STOP=stop bash runpod_speedrun.sh
#   MAX_HOURS=4 AUTO_STOP=remove bash runpod_speedrun.sh   # a budget: save, back up and remove the pod at 4 h
#   NANOCHAT_LANG=ko bash runpod_speedrun.sh             # the Korean run (speedrun.sh), in nanochat_artifacts_ko
# Every artifact goes to $WORKSPACE/nanochat_artifacts (the volume survives the pod), the log to
# $WORKSPACE/speedrun.log as well as the terminal, the report to $WORKSPACE/nanochat_final_report.md.
# Run it again after a lost pod or a crash: completed stages are skipped and the interrupted one
# resumes from its last checkpoint.
# Environment: NANOCHAT_LANG (en; ko: the Korean run, in $WORKSPACE/nanochat_artifacts_ko), WORKSPACE
# (/workspace), DEPTH (the GPU memory's preset, nanochat/plan.py: d20 on 80 GB), NUM_SHARDS (what DEPTH
# needs: d20 240, d26 460, d32 800), RUN_RL (0), AUTO_BACKUP (0), AUTO_STOP (stop or 1: stop the pod
# when done, remove: delete it; needs runpodctl and RUNPOD_POD_ID), MAX_HOURS (a wall-clock limit,
# fractions allowed: the
# running stage saves a checkpoint and stops, then a backup, then the pod stops, or is removed with
# AUTO_STOP=remove; run again to resume), ALLOW_CPU=1 (run without a GPU: the small CPU configuration),
# NPROC_PER_NODE (default every GPU CUDA_VISIBLE_DEVICES leaves visible), WANDB_RUN, and speedrun.sh's
# own knobs (SEQ_LEN, VOCAB_SIZE, COMPILE, DEVICE_BATCH_SIZE: each wins over the preset).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=dev/gpus.sh
source dev/gpus.sh
# shellcheck source=dev/lang.sh
source dev/lang.sh
lang_check
WORKSPACE="${WORKSPACE:-/workspace}"
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$(lang_base_dir "$WORKSPACE/nanochat_artifacts")}"
lang_refuse_other "$NANOCHAT_BASE_DIR"
LOG="$WORKSPACE/speedrun.log"
FINAL_REPORT="$WORKSPACE/nanochat_final_report.md"
export SPEEDRUN_LOG="$LOG"

die() { echo "error: $*" >&2; exit 1; }
[ -d "$WORKSPACE" ] && [ -w "$WORKSPACE" ] || die "WORKSPACE=$WORKSPACE is not a writable directory: attach the pod's volume or set WORKSPACE"
case "${AUTO_STOP:-0}" in
  0|"") POD_ACTION="" ;;
  1|stop) POD_ACTION=stop ;;
  remove) POD_ACTION=remove ;;
  *) die "AUTO_STOP=$AUTO_STOP: use stop (or 1) to stop the pod when the run ends, remove to delete it, 0 to leave it running" ;;
esac
LIMIT_S=""
if [ -n "${MAX_HOURS:-}" ]; then
  [[ $MAX_HOURS =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && LIMIT_S=$(awk -v h="$MAX_HOURS" 'BEGIN { printf "%d", h * 3600 }') \
    && [ "$LIMIT_S" -gt 0 ] || die "MAX_HOURS=$MAX_HOURS: give the wall-clock limit in hours, like 4 or 0.5"
  # a limit is a budget: the pod stops at it unless AUTO_STOP says otherwise
  [ -n "${AUTO_STOP:-}" ] || POD_ACTION=stop
fi
mkdir -p "$NANOCHAT_BASE_DIR"
START=$(date +%s)
echo "== runpod_speedrun start $(date -u '+%Y-%m-%d %H:%M:%S UTC') ==" | tee -a "$LOG"

# ---- the machine, before anything long
# the GPUs CUDA_VISIBLE_DEVICES leaves visible (nvidia-smi alone lists them all), NPROC_PER_NODE of them
GPU_ROWS=$(visible_gpu_rows)
NGPU=$(grep -c . <<<"$GPU_ROWS" || true)
GPU_MEM_MB=0
GPU_NAME=none
if [ -n "${NPROC_PER_NODE:-}" ] && [ "$NGPU" -gt 0 ]; then
  [[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]] && [ "$NPROC_PER_NODE" -le "$NGPU" ] \
    || die "NPROC_PER_NODE=$NPROC_PER_NODE: $NGPU GPU(s) are visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); set 1 to $NGPU"
  NGPU=$NPROC_PER_NODE
  GPU_ROWS=$(head -n "$NGPU" <<<"$GPU_ROWS")
fi
if [ "$NGPU" -gt 0 ]; then
  IFS=$'\t' read -r GPU_MEM_MB GPU_NAME < <(smallest_visible_gpu "$NGPU")
fi
FREE_GB=$(df -P -k "$WORKSPACE" | awk 'NR == 2 {print int($4 / 1048576)}')
{
  if [ "$NGPU" -gt 0 ]; then echo "GPUs:    $NGPU x $GPU_NAME ($((GPU_MEM_MB / 1024)) GiB each)"; else echo "GPUs:    none"; fi
  echo "CPU:     $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory"
  echo "disk:    $FREE_GB GiB free on $WORKSPACE"
} | tee -a "$LOG"

if [ "$NGPU" -eq 0 ]; then
  [ "${ALLOW_CPU:-0}" = 1 ] || die "no GPU is visible (nvidia-smi lists none): start a GPU pod, or set ALLOW_CPU=1 for the small CPU run"
  echo "plan:    CPU run (ALLOW_CPU=1): the small configuration of speedrun.sh" | tee -a "$LOG"
else
  # the preset of the smallest GPU's memory (depth, sequence, vocabulary, compile, batch), the shards
  # its depth needs, the time and cost: nanochat/plan.py, as speedrun.sh will size the run
  PLAN=$(PYTHONPATH="$PWD" python3 -m nanochat.plan --gpus="$NGPU" --gpu_name="$GPU_NAME" --gpu_mem_mb="$GPU_MEM_MB" \
         --depth="${DEPTH:-}" --max_seq_len="${SEQ_LEN:-}" --vocab_size="${VOCAB_SIZE:-}" --compile="${COMPILE:-}" \
         --device_batch_size="${DEVICE_BATCH_SIZE:-}") \
    || die "could not plan the run (python3 -m nanochat.plan failed)"
  eval "$PLAN"
  NUM_SHARDS="${NUM_SHARDS:-$PLAN_NUM_SHARDS}"
  export NUM_SHARDS NPROC_PER_NODE="$NGPU"
  echo "plan:    $PLAN_SUMMARY" | tee -a "$LOG"
  echo "data:    $NUM_SHARDS FineWeb-Edu shards" | tee -a "$LOG"
  # ~100 MB per FineWeb-Edu shard, and d20 checkpoints with optimizer state (~7 GB each, two kept per phase)
  NEED_GB=$((NUM_SHARDS / 10 + 30))
  [ "$FREE_GB" -ge "$NEED_GB" ] || die "only $FREE_GB GiB free on $WORKSPACE, the run needs about $NEED_GB GiB ($NUM_SHARDS shards + checkpoints): grow the volume or lower NUM_SHARDS"
fi
echo "RL:      ${RUN_RL:-0} (RUN_RL=1 to run it)   pod at the end: ${POD_ACTION:-left running}   time limit: ${MAX_HOURS:-none}${MAX_HOURS:+ h}   language: $NANOCHAT_LANG   artifacts: $NANOCHAT_BASE_DIR" | tee -a "$LOG"

# stop_pod: AUTO_STOP's action (stop | remove) with runpodctl, or the line saying why it cannot
stop_pod() {
  [ -n "$POD_ACTION" ] || return 0
  if ! command -v runpodctl >/dev/null 2>&1; then
    echo "AUTO_STOP=${AUTO_STOP:-stop} but runpodctl is not installed: $POD_ACTION the pod from the RunPod console" | tee -a "$LOG"
    return 0
  fi
  [ -n "${RUNPOD_POD_ID:-}" ] || { echo "AUTO_STOP=${AUTO_STOP:-stop} but RUNPOD_POD_ID is not set: $POD_ACTION the pod from the console" | tee -a "$LOG"; return 0; }
  if [ "$POD_ACTION" = remove ]; then
    echo "removing pod $RUNPOD_POD_ID (AUTO_STOP=remove); the network volume keeps everything" | tee -a "$LOG"
  else
    echo "stopping pod $RUNPOD_POD_ID (AUTO_STOP=${AUTO_STOP:-stop}); the volume keeps everything" | tee -a "$LOG"
  fi
  runpodctl "$POD_ACTION" pod "$RUNPOD_POD_ID"
}

# ---- the pipeline (its stages are resumable), logged to the volume and the terminal; a watchdog
# sends it SIGTERM at MAX_HOURS, which it passes to the running stage (speedrun.sh)
rc=0
LIMIT_HIT=0
PIPE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/runpod_speedrun.XXXXXX")
trap 'rm -rf -- "$PIPE_DIR"' EXIT
mkfifo "$PIPE_DIR/out"
tee -a "$LOG" < "$PIPE_DIR/out" &
TEE_PID=$!
bash speedrun.sh < /dev/null > "$PIPE_DIR/out" 2>&1 &
RUN_PID=$!
if [ -n "$LIMIT_S" ]; then
  while kill -0 "$RUN_PID" 2>/dev/null; do
    if [ "$LIMIT_HIT" = 0 ] && [ $(($(date +%s) - START)) -ge "$LIMIT_S" ]; then
      LIMIT_HIT=1
      echo "== MAX_HOURS=$MAX_HOURS reached: stopping the running stage (a training phase saves a checkpoint first) ==" | tee -a "$LOG"
      kill -TERM "$RUN_PID" 2>/dev/null || true
    fi
    sleep 1
  done
fi
wait "$RUN_PID" || rc=$?
wait "$TEE_PID" || true
ELAPSED=$(($(date +%s) - START))
if [ "$LIMIT_HIT" = 1 ]; then
  echo "== stopped at MAX_HOURS=$MAX_HOURS after $((ELAPSED / 60)) min (speedrun exit $rc); run this script again to resume ==" | tee -a "$LOG"
  WORKSPACE="$WORKSPACE" bash runpod_storage.sh backup --no-data 2>&1 | tee -a "$LOG"
  stop_pod
  exit 143
fi
if [ "$rc" != 0 ]; then
  echo "error: the speedrun stopped (exit $rc) after $((ELAPSED / 60)) min; the failed stage is named above and in $LOG. Run this script again to resume." | tee -a "$LOG" >&2
  exit "$rc"
fi

REPORT="$NANOCHAT_BASE_DIR/report/report.md"
[ -f "$REPORT" ] || die "the speedrun finished but wrote no report at $REPORT"
# the report links its plots relative to report/; point them at the same files from $WORKSPACE
PLOTS_REL=$(realpath -m --relative-to="$WORKSPACE" "$NANOCHAT_BASE_DIR/report/plots")
sed "s#](plots/#]($PLOTS_REL/#g" "$REPORT" > "$FINAL_REPORT.tmp" && mv "$FINAL_REPORT.tmp" "$FINAL_REPORT"
echo "== done in $((ELAPSED / 3600))h$((ELAPSED % 3600 / 60))m; report: $FINAL_REPORT ==" | tee -a "$LOG"
if [ -f "$NANOCHAT_BASE_DIR/stages/durations.txt" ]; then
  echo "stage durations (s):" | tee -a "$LOG"
  tee -a "$LOG" < "$NANOCHAT_BASE_DIR/stages/durations.txt"
fi

if [ "${AUTO_BACKUP:-0}" = 1 ]; then
  WORKSPACE="$WORKSPACE" bash runpod_storage.sh backup --no-data 2>&1 | tee -a "$LOG"
fi
stop_pod
